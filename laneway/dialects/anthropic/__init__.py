"""Anthropic's Messages API (``/v1/messages``) as an inbound dialect: request validation and
translation to OpenAI chat (``request``), OpenAI answers and streams back to Anthropic's shapes
(``response``, ``stream``), and errors in Anthropic's shape (``errors``). A lane of the anthropic
family serves the client's body natively instead (``providers.anthropic_native``)."""
