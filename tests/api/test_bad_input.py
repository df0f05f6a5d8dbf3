"""Bad input gets an OpenAI-shaped error with the right status, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from laneway.config import load_settings
from laneway.errors import ConfigError
from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config

CHAT = [{"role": "user", "content": "hi"}]


async def post(
    gw: RunningGateway, path: str, data: bytes, *, key: str | None = CLIENT_KEY
) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + path, data=data, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def assert_openai_error(body: Any, *, param: str | None = None) -> None:
    assert set(body) == {"error"}
    # A request that reached the router also says who it was for and where it failed.
    assert set(body["error"]) - {"laneway"} == {"message", "type", "param", "code"}
    if "laneway" in body["error"]:
        # (the lane only to admin keys, or with server.show_lane_in_errors)
        assert {"caller", "request_id", "run_id", "attempt"} == set(body["error"]["laneway"])
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "llama3.2:3b"}', 400, "messages"),
        (b'{"model": "llama3.2:3b", "messages": []}', 400, "messages"),
        (
            b'{"model": "llama3.2:3b", "messages": [{"role": "robot", "content": "x"}]}',
            400,
            "messages.0.role",
        ),
        (
            b'{"model": "llama3.2:3b", "messages": [{"role": "user", "content": "x"}], "temperature": 7}',
            400,
            "temperature",
        ),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "gpu-1/no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (
            b'{"model": "nomic-embed-text:latest", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "model",
        ),
    ],
)
async def test_malformed_requests(gw: RunningGateway, payload: bytes, status: int, param: str | None) -> None:
    got, body = await post(gw, "/v1/chat/completions", payload)
    assert got == status
    assert_openai_error(body, param=param)


def test_sdk_sees_not_found_and_bad_request(gw: RunningGateway) -> None:
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=CHAT)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="llama3.2:3b", input="chat models do not embed")


@pytest.mark.anyio
@pytest.mark.parametrize("key", [None, "lw-wrong", ""])
async def test_missing_or_wrong_key_is_401(gw: RunningGateway, key: str | None) -> None:
    got, body = await post(gw, "/v1/chat/completions", b'{"model": "llama3.2:3b", "messages": []}', key=key)
    assert got == 401
    assert_openai_error(body)
    assert body["error"]["type"] == "authentication_error"


def test_sdk_authentication_error(gw: RunningGateway) -> None:
    c = openai.OpenAI(base_url=gw.v1, api_key="lw-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


@pytest.mark.anyio
async def test_oversized_body_is_413(
    gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path
) -> None:
    config = three_family_config(three_sims, tmp_path / "gw", server={"max_body_bytes": 1024})
    gw = gateway_factory(config, three_sims)
    big = b'{"model": "llama3.2:3b", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
    got, body = await post(gw, "/v1/chat/completions", big)
    assert got == 413
    assert_openai_error(body)
    # and nothing reached the upstream
    assert three_sims["ollama"].stats.inference_requests == 0


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        ("claude-sonnet-4-6", {"n": 2}, "n"),
        ("claude-sonnet-4-6", {"logprobs": True}, "logprobs"),
        ("llama3.2:3b", {"n": 3}, "n"),
    ],
)
def test_unsupported_parameter_for_family_is_422(
    gw: RunningGateway, model: str, extra: Any, param: str
) -> None:
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        c.chat.completions.create(model=model, messages=CHAT, extra_body=extra)  # type: ignore[arg-type]
    assert exc.value.body is not None
    assert exc.value.param == param  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", ["openai", "ollama", "anthropic"])
def test_upstream_garbage_is_502(gw: RunningGateway, family: str) -> None:
    gw.sims[family].options.garbage = True
    model = {"openai": "gpt-4o-mini", "ollama": "llama3.2:3b", "anthropic": "claude-sonnet-4-6"}[family]
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model=model, messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_bad_response"  # type: ignore[attr-defined]


def test_upstream_timeout_is_504(gateway_factory: Any, sim_factory: Any, tmp_path: Path) -> None:
    slow = sim_factory(family="openai", latency=5.0)
    config = {
        "auth": {"keys": [{"name": "t", "key": CLIENT_KEY}]},
        "backends": {"slow": {"provider": "openai", "base_url": slow.url, "timeout": 0.3}},
    }
    gw = gateway_factory(config)
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.status_code == 504


def test_upstream_unreachable_is_502(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="openai")
    gw = gateway_factory(
        {
            "auth": {"keys": [{"name": "t", "key": CLIENT_KEY}]},
            "backends": {"b": {"provider": "openai", "base_url": sim.url}},
        }
    )
    sim.thread.stop()  # the backend goes away after it was discovered
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_unreachable"  # type: ignore[attr-defined]


def test_upstream_rate_limit_passes_429_with_retry_after(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="openai", ratelimit="openai", rpm=1)
    gw = gateway_factory(
        {
            "auth": {"keys": [{"name": "t", "key": CLIENT_KEY}]},
            "backends": {"b": {"provider": "openai", "base_url": sim.url}},
        }
    )
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    c.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.response.headers.get("retry-after")


@pytest.mark.anyio
async def test_unknown_path_is_openai_shaped_404(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/v1/nope") as r:
        assert r.status == 404
        assert_openai_error(await r.json())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "laneway.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "backends:\n  gpu-1:\n    provider: olama\n    base_url: http://x\n",
            ["backends.gpu-1.provider", ":3"],
        ),
        (
            "backends:\n  gpu-1:\n    provider: ollama\n    base_url: ftp://x\n",
            ["backends.gpu-1.base_url", ":4"],
        ),
        (
            "backends:\n  gpu-1:\n    provider: ollama\n    base_url: http://x\n    colour: red\n",
            ["backends.gpu-1.colour", "unknown key", ":5"],
        ),
        ("server:\n  port: [\n", ["not valid YAML"]),
        ("routes:\n  a: [b]\n  b: [llama3]\n", ["routes.a[0]", "may not name other routes", ":2"]),
        ("routes:\n  a: [llama3@extreme]\n", ["routes.a[0]", "@extreme"]),
        ("auth:\n  keys:\n    - name: k\n", ["auth.keys.0", "exactly one of"]),
        ("- just\n- a list\n", ["top level must be a mapping"]),
        ("inventory:\n  intervals:\n    ollama: 0\n", ["inventory.intervals.ollama", "greater than 0", ":3"]),
        ("inventory:\n  intervals:\n    gemini: 10\n", ["inventory.intervals.gemini", "'ollama'", ":3"]),
        ("inventory:\n  auth_cooldown: -5\n", ["inventory.auth_cooldown", ":2"]),
        ("routes:\n  chat: [x]\ndefaults:\n  chat: y\n", ["key 'defaults'", "'chat' is also a route", ":3"]),
        ("defaults:\n  chat: a@extreme\n", ["defaults.chat[0]", "@extreme", ":2"]),
        (
            "backends:\n  a:\n    provider: ollama\n    base_url: http://x\n    models:\n"
            "      - {name: m, context_length: -1}\n",
            ["backends.a.models.0.context_length", "greater than 0", ":6"],
        ),
        (
            "backends:\n  a:\n    provider: ollama\n    base_url: http://x\n    models:\n"
            "      - {name: m, capabilities: [telepathy]}\n",
            ["backends.a.models.0.capabilities.0", "'vision'"],
        ),
        (
            "backends:\n  a:\n    provider: ollama\n    base_url: http://x\n    models: [m, m]\n",
            ["backends.a.models", "'m' is declared twice", ":5"],
        ),
        ("storage:\n  runtime_url: mongodb://x\n", ["storage.runtime_url", "redis://", ":2"]),
    ],
)
def test_config_errors_name_the_key_file_and_line(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    message = exc.value.message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml")


# --- typos in the config: the unknown key, "did you mean", and selectors that match nothing --------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # the typo also makes base_url "required": the unknown key is what to report
            "backends:\n  oai:\n    provider: openai\n    base-url: https://api.openai.com/v1\n",
            ":4, key 'backends.oai.base-url': unknown key 'base-url' (did you mean 'base_url'?)",
        ),
        ("backend:\n  gpu-1: {}\n", ":1, key 'backend': unknown key 'backend' (did you mean 'backends'?)"),
        (
            "backends:\n  a:\n    provider: ollama\n    base_url: http://x\n    models:\n"
            "      - {name: m, contxt_length: 8192}\n",
            ":6, key 'backends.a.models.0.contxt_length': unknown key 'contxt_length' "
            "(did you mean 'context_length'?)",
        ),
        (  # of two unknown keys, the first in the file
            "routes:\n  r: [{provider: openai, modle: x}]\n"
            "auth:\n  keys:\n    - {name: a, key: b, admn: true}\n",
            ":2, key 'routes.r.0.modle': unknown key 'modle' (did you mean 'model'?)",
        ),
        (
            "auth:\n  keys:\n    - {name: a, key: b, colour: red}\n",
            ":3, key 'auth.keys.0.colour': unknown key 'colour' (this section takes: admin, caller, key, "
            "key_env, key_hash, max_priority, name, published_lanes, trusted)",
        ),
        (
            "routes:\n  fast:\n    - llama3\n    - {provider: opneai}\n",
            ":4, key 'routes.fast[1]': provider 'opneai' matches no provider (did you mean 'openai'?) "
            "(one of openai, ollama, anthropic, virtual)",
        ),
        (
            "defaults:\n  chat: {tier: locl, model: 'llama*'}\n",
            ":2, key 'defaults.chat[0]': tier 'locl' matches no tier (did you mean 'local'?) "
            "(one of local, fleet, cloud, frontier, direct)",
        ),
        (
            "routes:\n  r: [{provider: 'gem*'}]\n",
            ":2, key 'routes.r[0]': provider 'gem*' matches no provider "
            "(one of openai, ollama, anthropic, virtual)",
        ),
    ],
)
def test_a_typo_is_named_with_its_line_and_what_was_meant(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert exc.value.message == f"config error in {path}{expected}"


ROUTES = """\
backends:
  claude: {provider: anthropic, base_url: http://127.0.0.1:9, api_key: k}
  gpu-1: {provider: ollama, base_url: http://127.0.0.1:9}
routes:
  smart: ["claud/claude-sonnet-*@high", "meta-llama/llama-3.1-8b"]
  fast: [{backend: gpu1, model: "llama*"}, "gpu-*/llama3.2:*"]
  later: [{backend: added-later}]
"""


@pytest.mark.anyio
async def test_selectors_that_match_no_backend_are_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend may be declared in the database (or registered by a publisher) after the config
    was written, so these are start-up warnings, checked against the database's backends too."""
    from laneway.config import BackendConfig
    from laneway.gateway import Gateway, GatewayOptions
    from laneway.storage import Database

    path = write(tmp_path, ROUTES + f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    settings = load_settings(path)  # no error: none of these is certainly wrong
    async with await Database.open(settings.storage.resolved_database_url()) as db:
        await db.backends.add("added-later", BackendConfig(provider="ollama", base_url="http://127.0.0.1:9"))
    caplog.set_level("WARNING", logger="laneway")
    gateway = await Gateway.open(settings, options=GatewayOptions(schedule=False, key_reload_interval=3600))
    try:
        warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config warning")]
    finally:
        await gateway.aclose()
    assert warned == [
        f"config warning in {path}:5, key 'routes.smart[0]': 'claud' matches no declared backend, so "
        "'claud/claude-sonnet-*@high' is read as a model name (did you mean 'claude/claude-sonnet-*@high'?)",
        f"config warning in {path}:6, key 'routes.fast[0]': backend 'gpu1' matches no declared backend "
        "(did you mean 'gpu-1'?); the selector serves nothing until one is added (laneway backends add) "
        "or a publisher of that name registers",
    ]  # 'meta-llama/...' is a model name, gpu-* matches gpu-1, added-later is in the database
