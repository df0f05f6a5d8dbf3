"""Ollama's API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``), spoken to
clients, so that any Ollama client (the ollama libraries and CLI, Open WebUI) can use laneway as
"an Ollama" with every lane it has.

Pure translation, in and out of the OpenAI format the router serves: ``request`` (an Ollama body
→ an OpenAI body and the operation that serves it), ``response`` (a whole OpenAI answer → Ollama's),
``stream`` (an OpenAI SSE stream → Ollama's NDJSON lines) and ``errors`` (Ollama's error shape).
The routes that use them are ``laneway.api.ollama_routes``.
"""
