"""Inbound dialects: each client API laneway speaks, translated to and from the OpenAI chat format
the router serves."""
