from laneway.config.loader import load_settings, parse_yaml, settings_from_data
from laneway.config.schema import (
    AuthConfig,
    BackendConfig,
    KeyConfig,
    SelectorConfig,
    Settings,
    StorageConfig,
)

__all__ = [
    "AuthConfig",
    "BackendConfig",
    "KeyConfig",
    "SelectorConfig",
    "Settings",
    "StorageConfig",
    "load_settings",
    "parse_yaml",
    "settings_from_data",
]
