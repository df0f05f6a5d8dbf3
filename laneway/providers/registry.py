"""Provider family name → adapter class."""

from __future__ import annotations

import importlib

from laneway.config.schema import BackendConfig
from laneway.providers.base import Provider

_FAMILIES: dict[str, tuple[str, str]] = {
    "openai": ("laneway.providers.openai", "OpenAIProvider"),
    "ollama": ("laneway.providers.ollama", "OllamaProvider"),
    "anthropic": ("laneway.providers.anthropic", "AnthropicProvider"),
}


def build_provider(name: str, config: BackendConfig) -> Provider:
    module, attr = _FAMILIES[config.provider]
    cls = getattr(importlib.import_module(module), attr)
    provider: Provider = cls(name, config)
    return provider
