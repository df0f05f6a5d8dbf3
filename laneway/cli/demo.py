"""``laneway demo``: simulated Ollama, OpenAI and Anthropic upstreams with the gateway in front."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from laneway.cli.common import friendly_errors, run_async

if TYPE_CHECKING:
    from laneway.gateway import Gateway

DEMO_KEY = "lw-demo-key"
PUBLISH_TOKEN = "lw-demo-publish-token"
LAPTOP_MODEL = "qwen2.5:0.5b"  # served by a fourth sim, published into the gateway by a publisher


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port"
        ) from None
    return sock


def demo_config(ports: dict[str, int], data_dir: str, host: str, port: int) -> dict[str, Any]:
    return {
        "server": {"host": host, "port": port},
        "storage": {"data_dir": data_dir},
        "auth": {"keys": [{"name": "demo", "key": DEMO_KEY, "admin": True}]},
        "backends": {
            "local-ollama": {"provider": "ollama", "base_url": f"http://127.0.0.1:{ports['ollama']}"},
            "cloud-openai": {
                "provider": "openai",
                "base_url": f"http://127.0.0.1:{ports['openai']}/v1",
                "api_key": "sim-openai-key",
            },
            "frontier-anthropic": {
                "provider": "anthropic",
                "base_url": f"http://127.0.0.1:{ports['anthropic']}",
                "api_key": "sim-anthropic-key",
            },
        },
        "publishers": {"tokens": [{"name": "demo", "token": PUBLISH_TOKEN, "names": ["*"]}]},
        "routes": {
            "smart": ["frontier-anthropic/claude-sonnet-*", "cloud-openai/gpt-4o-mini"],
            "fast": ["local-ollama/llama3.2:*", "cloud-openai/gpt-4o-mini"],
        },
        "defaults": {
            "chat": "local-ollama/llama3.2:*",
            "task": "cloud-openai/gpt-4o-mini",
            "embed": "*embed*",
        },
    }


def instructions(url: str, config_path: Path, laptop: str) -> str:
    return f"""
laneway demo is running at {url}  (config: {config_path})

  export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY={DEMO_KEY}

  curl -s {url}/v1/models -H 'authorization: Bearer {DEMO_KEY}'
  curl -s {url}/v1/chat/completions -H 'authorization: Bearer {DEMO_KEY}' \\
       -H 'content-type: application/json' \\
       -d '{{"model": "smart", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  .venv/bin/python -c 'from openai import OpenAI; c = OpenAI(); \\
print(c.chat.completions.create(model="llama3.2:3b", messages=[{{"role": "user", "content": "hi"}}]))'

Every client's own API, on every lane (docs/dialects.md):

  curl -s {url}/v1/messages -H 'x-api-key: {DEMO_KEY}' -H 'anthropic-version: 2023-06-01' \\
       -H 'content-type: application/json' \\
       -d '{{"model": "llama3.2:3b", "max_tokens": 99, "messages": [{{"role": "user", "content": "Hi"}}]}}'
  curl -s {url}/v1/responses -H 'authorization: Bearer {DEMO_KEY}' -H 'content-type: application/json' \\
       -d '{{"model": "claude-sonnet-4-6", "input": "Hello!"}}'
  curl -s {url}/api/chat -H 'authorization: Bearer {DEMO_KEY}' \\
       -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}], "stream": false}}'

  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={DEMO_KEY} claude -p "hi" --model llama3.2:3b

Models: llama3.2:3b and nomic-embed-text:latest (simulated Ollama), gpt-4o-mini and
text-embedding-3-small (simulated OpenAI), claude-sonnet-4-6 and claude-haiku-4-5 (simulated
Anthropic); also by backend (local-ollama/llama3.2:3b), by route (smart, fast) and by role
(chat, task, embed). {LAPTOP_MODEL} is published by "demo-laptop", a `laneway publish` running
inside the demo in front of a fourth simulated Ollama ({laptop}): a virtual lane of tier fleet.
Publish it once more under another name, from another terminal:

  .venv/bin/laneway publish --gateway {url} --token {PUBLISH_TOKEN} --backend {laptop} --name my-box

The demo key is also an admin key: watch the live inventory with

  export LANEWAY_URL={url} LANEWAY_ADMIN_KEY={DEMO_KEY}
  .venv/bin/laneway lanes          # every lane (add --watch to follow changes)
  .venv/bin/laneway backends       # each backend's last refresh, error and auth cooldown
  .venv/bin/laneway refresh        # refresh every backend now
  .venv/bin/laneway publishers     # publisher sessions, their lanes and tasks in flight

Press Ctrl-C to stop.
"""


async def _run(host: str, port: int, data_dir: str) -> None:
    import uvicorn

    from laneway import logs
    from laneway.config import settings_from_data
    from laneway.gateway import Gateway
    from laneway.sim.app import build_sim_app
    from laneway.sim.options import SimOptions

    logs.configure("warning", json=False)
    sims = {
        "ollama": SimOptions(family="ollama", latency=0.05, tokens_per_second=50),
        "openai": SimOptions(family="openai", api_key="sim-openai-key", latency=0.05, tokens_per_second=50),
        "anthropic": SimOptions(
            family="anthropic", api_key="sim-anthropic-key", latency=0.05, tokens_per_second=50
        ),
        "laptop": SimOptions(family="ollama", models=[LAPTOP_MODEL], latency=0.05, tokens_per_second=50),
    }
    servers: list[tuple[uvicorn.Server, socket.socket]] = []
    ports: dict[str, int] = {}
    for family, options in sims.items():
        sock = _bind("127.0.0.1", 0)
        ports[family] = sock.getsockname()[1]
        config = uvicorn.Config(
            build_sim_app(options), http="httptools", log_level="warning", access_log=False
        )
        servers.append((uvicorn.Server(config), sock))

    data = demo_config(ports, data_dir, host, port)
    config_path = Path(data_dir) / "demo.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    settings = settings_from_data(data, source=str(config_path))
    gw_sock = _bind(host, port)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    try:
        while not all(server.started for server, _ in servers):  # noqa: ASYNC110 - uvicorn has no started event
            await asyncio.sleep(0.01)
        async with await Gateway.open(settings) as gateway:
            await _serve(gateway, f"http://{host}:{gw_sock.getsockname()[1]}", gw_sock, ports, config_path)
    finally:
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


async def _serve(
    gateway: Gateway, url: str, sock: socket.socket, ports: dict[str, int], config_path: Path
) -> None:
    """Serve the open gateway on ``sock`` with the demo's publisher, until stopped."""
    from laneway.cli.serve import gateway_server

    gw_server = gateway_server(gateway)
    serving = asyncio.create_task(gw_server.serve(sockets=[sock]))
    while not gw_server.started and not serving.done():  # noqa: ASYNC110 - no started event
        await asyncio.sleep(0.01)
    laptop = f"http://127.0.0.1:{ports['laptop']}"
    backend, publisher = await _publisher(url, laptop)
    publishing = asyncio.create_task(publisher.run())
    click.echo(instructions(url, config_path, laptop))
    try:
        await serving
    finally:
        publisher.stop()
        await asyncio.gather(publishing, return_exceptions=True)
        await backend.aclose()


async def _publisher(url: str, laptop: str) -> tuple[Any, Any]:
    """The demo's own ``laneway publish``: the laptop sim's model, published as demo-laptop.
    Returns (its local backend, the publisher); the caller closes the backend."""
    from laneway.publisher.local import LocalBackend, select_lanes
    from laneway.publisher.runner import Publisher

    backend, models = await LocalBackend.connect(laptop, "ollama")
    return backend, Publisher(
        gateway=url,
        token=PUBLISH_TOKEN,
        backend=backend,
        lanes=select_lanes(models),
        name="demo-laptop",
        max_concurrency=4,
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the gateway listens on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port the gateway listens on.")
@click.option(
    "--data-dir", default=None, help="Where the demo keeps its database (default: a new temporary folder)."
)
@friendly_errors
def demo(host: str, port: int, data_dir: str | None) -> None:
    """Start simulated Ollama, OpenAI and Anthropic upstreams and the gateway in front of them."""
    folder = data_dir or tempfile.mkdtemp(prefix="laneway-demo-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        run_async(_run(host, port, folder))
    except KeyboardInterrupt:
        pass
