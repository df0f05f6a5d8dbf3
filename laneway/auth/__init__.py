"""Who may do what: client API keys (``keys``), publisher tokens (``tokens``), and keeping both
current in a running gateway (``reload``)."""
