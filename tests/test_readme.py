"""The README's example config is a real config: it loads, and names what it says it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from laneway.config import load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    for var in set(re.findall(r"key_env: (\w+)", block.group(1))):
        monkeypatch.setenv(var, "secret")
    config = tmp_path / "laneway.yaml"
    config.write_text(block.group(1))
    settings = load_settings(config)
    assert set(settings.backends) == {"gpu-1", "vllm-a", "openai", "claude"}
    assert {"smart", "fast", "chat", "task", "embed"} <= set(settings.routes)
    assert settings.backends["gpu-1"].stream_holds_slot
    assert settings.backends["claude"].declared["claude-haiku-4-5"].context_length == 200000
