"""laneway: a self-hosted LLM gateway and control plane."""

__version__ = "0.1.0"
