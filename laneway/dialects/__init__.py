"""Inbound dialects: the APIs other than OpenAI's that clients speak to laneway (Anthropic's
Messages API, ...), each translated to and from the OpenAI format the router and the providers
speak. A sub-package per dialect; each is pure translation (no I/O): its routes live in ``api``."""
