"""``laneway demo``, the README's first command, as a process: it serves the three simulated
families and a published model, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import ENV, LANEWAY, get, wait_for

DEMO_KEY = "lw-demo-key"
CHAT: list[dict[str, str]] = [{"role": "user", "content": "hi"}]


def test_demo_serves_every_family_and_a_published_model(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*LANEWAY, "demo", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        lane = "fleet:virtual:demo-laptop:chat:qwen2.5%3A0.5b"

        def published() -> bool:
            status, body = get(url + "/admin/lanes", DEMO_KEY)
            return status == 200 and any(ln["id"] == lane and ln["routable"] for ln in body["lanes"])

        wait_for(published, "the demo's publisher has published its model")
        with openai.OpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
            smart = sdk.chat.completions.with_raw_response.create(model="smart", messages=CHAT)  # type: ignore[arg-type]
            assert smart.headers["x-laneway-backend"] == "frontier-anthropic"
            raw = sdk.chat.completions.with_raw_response.create(model="qwen2.5:0.5b", messages=CHAT)  # type: ignore[arg-type]
            assert raw.headers["x-laneway-lane"] == lane
            assert raw.parse().choices[0].message.content
            emb = sdk.embeddings.create(model="embed", input="x")
            assert emb.data[0].embedding
            # the other doors it prints, each to a lane of another family (the published one too)
            answer = sdk.responses.create(model="claude-sonnet-4-6", input="Hello!")
            assert answer.output_text.startswith("Hello from claude-sonnet-4-6")
        with anthropic.Anthropic(base_url=url, api_key=DEMO_KEY, max_retries=0) as claude:
            for model in ("llama3.2:3b", "qwen2.5:0.5b"):
                message = claude.messages.create(model=model, max_tokens=99, messages=CHAT)  # type: ignore[arg-type]
                assert message.content[0].type == "text"
                assert message.content[0].text.startswith(f"Hello from {model}")
        chat = ollama.Client(host=url, headers={"authorization": f"Bearer {DEMO_KEY}"}).chat(
            model="gpt-4o-mini", messages=CHAT
        )
        assert (chat.message.content or "").startswith("Hello from gpt-4o-mini")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "Traceback" not in text
    assert "laneway demo is running at" in text
    assert "laneway publish --gateway" in text


@pytest.mark.parametrize(
    ("args", "command"), [([], "laneway demo"), (["PORT=9123"], "laneway demo --port 9123")]
)
def test_make_demo_passes_a_port_on(args: list[str], command: str) -> None:
    # A dry run: make prints the commands it would run, so this starts nothing. Without the
    # variables of a make that runs these tests (make test), which change what it prints.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PORT")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo", *args],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    assert done.stdout.strip().splitlines()[-1].endswith(f"/{command}")
