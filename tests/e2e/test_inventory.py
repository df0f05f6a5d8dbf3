"""The inventory seen from outside: the gateway on loopback in front of simulated upstreams, driven
with the official ``openai`` SDK and the admin API."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from laneway.inventory.lanes import compose_lane_id
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.testing import ServerThread
from tests.conftest import CLIENT_KEY, RunningGateway

pytestmark = pytest.mark.anyio

ADMIN_KEY = "lw-test-admin-key"
CHAT = [{"role": "user", "content": "hi"}]
KEYS = {"keys": [{"name": "tests", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN_KEY, "admin": True}]}


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)


async def admin(gw: RunningGateway, method: str, path: str, key: str = ADMIN_KEY) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.url + path, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_backend_started_after_laneway_is_routable_on_the_first_request(
    gateway_factory: Any, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet: the start-up refresh is refused
    gw = gateway_factory(
        {"auth": KEYS, "backends": {"late": {"provider": "ollama", "base_url": f"http://127.0.0.1:{port}"}}}
    )
    status, body = await admin(gw, "GET", "/admin/backends")
    assert status == 200
    assert "unreachable" in body["backends"][0]["last_error"]
    with ServerThread(build_sim_app(SimOptions(family="ollama", models=["llama3:8b"])), port=port):
        async with client(gw) as c:
            raw = await c.chat.completions.with_raw_response.create(model="llama3:8b", messages=CHAT)  # type: ignore[arg-type]
            assert raw.headers["x-laneway-backend"] == "late"
            assert raw.parse().choices[0].message.content
            with pytest.raises(openai.NotFoundError) as err:  # still a clear 404 for what nobody serves
                await c.chat.completions.create(model="nobody:1b", messages=CHAT)  # type: ignore[arg-type]
            assert "nobody:1b" in str(err.value)


async def test_model_names_with_colons_and_slashes_round_trip_through_lane_ids(
    gateway_factory: Any, sim_factory: Any
) -> None:
    ollama = sim_factory(family="ollama", models=["llama3:8b"])
    router = sim_factory(
        family="openai",
        api_key="or-key",
        models_format="openrouter",
        models=["meta-llama/llama-3.1-8b-instruct:free"],
    )
    gw = gateway_factory(
        {
            "auth": KEYS,
            "backends": {
                "gpu": {"provider": "ollama", "base_url": ollama.url},
                "openrouter": {"provider": "openai", "base_url": router.url + "/api/v1", "api_key": "or-key"},
            },
        }
    )
    names = {"gpu": "llama3:8b", "openrouter": "meta-llama/llama-3.1-8b-instruct:free"}
    status, body = await admin(gw, "GET", "/admin/lanes?type=chat")
    assert status == 200
    listed = {lane["backend"]: lane for lane in body["lanes"]}
    assert {b: lane["model"] for b, lane in listed.items()} == names
    async with client(gw) as c:
        for backend, model in names.items():
            tier = "local" if backend == "gpu" else "cloud"
            family = "ollama" if backend == "gpu" else "openai"
            lane_id = compose_lane_id(
                tier=tier, provider_family=family, instance_id=backend, type="chat", model=model
            )
            assert listed[backend]["id"] == lane_id
            for asked in (lane_id, model, f"{backend}/{model}"):
                raw = await c.chat.completions.with_raw_response.create(model=asked, messages=CHAT)  # type: ignore[arg-type]
                assert raw.headers["x-laneway-lane"] == lane_id
                assert raw.headers["x-laneway-model"] == model
        listing = await c.models.list()
        assert {"llama3:8b", "meta-llama/llama-3.1-8b-instruct:free"} <= {m.id for m in listing.data}


async def test_refused_credentials_take_lanes_out_of_rotation_visibly(
    gateway_factory: Any, sim_factory: Any
) -> None:
    primary = sim_factory(family="openai", api_key="k1")
    gw = gateway_factory(
        {
            "auth": KEYS,
            "backends": {
                "vllm": {
                    "provider": "openai",
                    "base_url": primary.url,
                    "api_key": "k1",
                    "tier": "local",
                    "weight": 1000,
                },
            },
            "routes": {"mini": ["vllm/gpt-4o-mini"]},
        }
    )
    primary.options.api_key = "changed-upstream"
    status, body = await admin(gw, "POST", "/admin/refresh?backend=vllm")
    assert status == 200
    refreshed = body["backends"][0]
    assert refreshed["cooldown_until"] is not None
    assert "401" in refreshed["last_error"]
    status, body = await admin(gw, "GET", "/admin/lanes?backend=vllm&health=denied")
    assert body["count"] == 3
    assert not any(lane["routable"] for lane in body["lanes"])
    async with client(gw) as c:
        with pytest.raises(openai.APIStatusError) as err:
            await c.chat.completions.create(model="mini", messages=CHAT)  # type: ignore[arg-type]
        assert err.value.status_code == 503
        assert "denied" in err.value.message
        assert "gpt-4o-mini" not in {m.id for m in (await c.models.list()).data}
    primary.options.api_key = "k1"  # the operator fixed it and lifts the cooldown
    status, body = await admin(gw, "DELETE", "/admin/cooldowns/vllm")
    assert status == 200
    assert body["lifted"]
    assert body["backend"]["cooldown_until"] is None
    async with client(gw) as c:
        reply = await c.chat.completions.create(model="mini", messages=CHAT)  # type: ignore[arg-type]
        assert reply.choices[0].message.content


async def test_default_routes_let_a_client_ask_for_a_role(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b", "qwen2.5:7b", "nomic-embed-text:latest"])
    gw = gateway_factory(
        {
            "auth": KEYS,
            "backends": {"gpu": {"provider": "ollama", "base_url": sim.url}},
            "defaults": {"chat": "gpu/llama3:*", "task": ["qwen*", "llama3:8b"], "embed": "*embed*"},
        }
    )
    async with client(gw) as c:
        for role, model in (("chat", "llama3:8b"), ("task", "qwen2.5:7b")):
            raw = await c.chat.completions.with_raw_response.create(model=role, messages=CHAT)  # type: ignore[arg-type]
            assert raw.headers["x-laneway-model"] == model
        vectors = await c.embeddings.create(model="embed", input="hello")
        assert len(vectors.data[0].embedding) > 0
        roles = {m.id for m in (await c.models.list()).data}
        assert {"chat", "task", "embed"} <= roles


async def test_admin_api_needs_an_admin_key_and_says_what_is_wrong(gw_admin: RunningGateway) -> None:
    status, body = await admin(gw_admin, "GET", "/admin/lanes", key=CLIENT_KEY)
    assert status == 403
    assert "admin" in body["error"]["message"]
    status, body = await admin(gw_admin, "GET", "/admin/lanes", key="nonsense")
    assert status == 401
    status, body = await admin(gw_admin, "GET", "/admin/lanes?colour=blue")
    assert status == 400
    assert "colour" in body["error"]["message"]
    assert "backend" in body["error"]["message"]
    status, body = await admin(gw_admin, "POST", "/admin/refresh?backend=nope")
    assert status == 404
    assert "gpu-1" in body["error"]["message"]
    status, body = await admin(gw_admin, "POST", "/admin/refresh?cache=maybe")
    assert status == 400


async def test_admin_lanes_filter_by_any_field(gw_admin: RunningGateway) -> None:
    _, every = await admin(gw_admin, "GET", "/admin/lanes")
    assert every["count"] == len(every["lanes"]) > 0
    for query, check in (
        ("backend=gpu-1", lambda ln: ln["backend"] == "gpu-1"),
        ("type=embedding", lambda ln: ln["type"] == "embedding"),
        ("tier=frontier&family=anthropic", lambda ln: ln["family"] == "anthropic"),
        ("capabilities=vision", lambda ln: "vision" in ln["capabilities"]),
        ("routable=true", lambda ln: ln["routable"]),
    ):
        _, found = await admin(gw_admin, "GET", f"/admin/lanes?{query}")
        expected = [ln for ln in every["lanes"] if check(ln)]
        assert expected, query
        assert found["lanes"] == expected, query


async def test_admin_backends_refresh_and_model_cache(gw_admin: RunningGateway) -> None:
    sims = gw_admin.sims
    status, body = await admin(gw_admin, "GET", "/admin/backends")
    by_name = {b["name"]: b for b in body["backends"]}
    assert set(by_name) == {"gpu-1", "oai", "claude"}
    assert by_name["oai"]["source"] == "upstream"
    assert by_name["oai"]["lanes"] == 3
    assert by_name["gpu-1"]["interval"] == 15
    assert by_name["claude"]["tier"] == "frontier"

    asked = sims["openai"].stats.requests_by_path["/v1/models"]
    status, body = await admin(gw_admin, "POST", "/admin/refresh")
    assert status == 200
    assert {b["name"]: b["source"] for b in body["backends"]}["oai"] == "cache"
    assert sims["openai"].stats.requests_by_path["/v1/models"] == asked

    status, body = await admin(gw_admin, "GET", "/admin/model-cache")
    assert {e["backend"] for e in body["entries"]} == {"oai", "claude"}
    assert body["ttl"] == 3600
    status, body = await admin(gw_admin, "DELETE", "/admin/model-cache/oai")
    assert body["invalidated"] == 1
    await admin(gw_admin, "POST", "/admin/refresh?backend=oai")
    assert sims["openai"].stats.requests_by_path["/v1/models"] == asked + 1
    status, body = await admin(gw_admin, "POST", "/admin/refresh?backend=oai&cache=false")
    assert body["backends"][0]["source"] == "upstream"
    status, body = await admin(gw_admin, "DELETE", "/admin/model-cache")
    assert body["invalidated"] == 2


@pytest.fixture
def gw_admin(gateway_factory: Any, three_sims: dict[str, Any], tmp_path: Path) -> RunningGateway:
    from tests.conftest import three_family_config

    config = three_family_config(three_sims, tmp_path / "gw", auth=KEYS)
    running: RunningGateway = gateway_factory(config, three_sims)
    return running


async def test_backends_declared_in_the_database_come_and_go_while_running(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path
) -> None:
    from laneway.config import BackendConfig
    from laneway.storage import Database

    sim = sim_factory(family="ollama", models=["llama3:8b"])
    url = f"sqlite:///{tmp_path / 'state.db'}"
    gw = gateway_factory({"storage": {"database_url": url}, "auth": KEYS})
    async with await Database.open(url) as db:
        await db.backends.add("added-later", BackendConfig(provider="ollama", base_url=sim.url))
        _, body = await admin(gw, "POST", "/admin/refresh")  # re-reads the declared state first
        assert [b["name"] for b in body["backends"]] == ["added-later"]
        async with client(gw) as c:
            reply = await c.chat.completions.create(model="llama3:8b", messages=CHAT)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
        assert await db.backends.remove("added-later")
        _status, body = await admin(gw, "POST", "/admin/refresh")
        assert body["backends"] == []
        _, lanes = await admin(gw, "GET", "/admin/lanes")
        assert lanes["count"] == 0


async def test_replicas_share_model_lists_and_cooldowns_through_redis(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path
) -> None:
    """Cluster mode: two gateways on one Redis. Unique backend name and key, so runs never meet."""
    import uuid

    tag = uuid.uuid4().hex[:10]
    name, key = f"oai-{tag}", f"key-{tag}"
    sim = sim_factory(family="openai", api_key=key)

    def replica(i: int) -> RunningGateway:
        config = {
            "storage": {
                "data_dir": str(tmp_path / f"replica-{i}"),
                "runtime_url": "redis://127.0.0.1:6379/0",
            },
            "auth": KEYS,
            "backends": {name: {"provider": "openai", "base_url": sim.url, "api_key": key}},
        }
        running: RunningGateway = gateway_factory(config)
        return running

    a = replica(0)
    b = replica(1)
    try:
        assert sim.stats.requests_by_path["/v1/models"] == 1  # b took up a's refresh from Redis
        _, body = await admin(b, "GET", "/admin/backends")
        assert body["backends"][0]["refreshed_by"] == a.gateway.replicas.id
        _, body = await admin(b, "POST", f"/admin/refresh?backend={name}")  # b's own refresh
        assert sim.stats.requests_by_path["/v1/models"] == 1  # b read a's list from Redis
        assert body["backends"][0]["source"] == "cache"

        sim.options.api_key = "rotated-upstream"
        _, body = await admin(a, "POST", f"/admin/refresh?backend={name}&cache=false")
        assert body["backends"][0]["cooldown_until"] is not None
        _, body = await admin(b, "POST", f"/admin/refresh?backend={name}&cache=false")
        assert sim.stats.requests_by_path["/v1/models"] == 2  # b skipped: the cooldown is shared
        assert "refreshes paused" in body["backends"][0]["last_error"]
    finally:
        await admin(a, "DELETE", f"/admin/cooldowns/{name}")
        await admin(a, "DELETE", f"/admin/model-cache/{name}")


@pytest.mark.parametrize("runtime", ["memory://", "redis://127.0.0.1:6379/0"])
async def test_a_backend_of_the_same_name_and_key_elsewhere_keeps_its_own_model_list(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path, runtime: str
) -> None:
    """Two gateways share one cache store (one data_dir, or one Redis) and each declares ``oai``
    with the same key, but at different base URLs: the second serves its own upstream's models,
    not the first one's cached list, and neither list pushes the other out."""
    import uuid

    tag = uuid.uuid4().hex[:10]  # runs sharing this machine's Redis never meet
    name, key = f"oai-{tag}", f"key-{tag}"
    first = sim_factory(family="openai", api_key=key, models=["gpt-4o-mini"])
    second = sim_factory(family="openai", api_key=key, models=["gpt-4.1-nano"])
    shared = str(tmp_path / "shared")

    def gateway(sim: Any) -> RunningGateway:
        config = {
            "storage": {"data_dir": shared, "runtime_url": runtime},
            "auth": KEYS,
            "backends": {name: {"provider": "openai", "base_url": sim.url, "api_key": key}},
        }
        running: RunningGateway = gateway_factory(config)
        return running

    a = gateway(first)
    b = gateway(second)
    try:
        for gw, model in ((a, "gpt-4o-mini"), (b, "gpt-4.1-nano")):
            _, lanes = await admin(gw, "GET", "/admin/lanes")
            assert {lane["model"] for lane in lanes["lanes"]} == {model}
        assert second.stats.requests_by_path["/v1/models"] == 1  # b asked its own upstream

        _, body = await admin(a, "POST", f"/admin/refresh?backend={name}")
        assert body["backends"][0]["source"] == "cache"  # b's list did not replace a's
        assert first.stats.requests_by_path["/v1/models"] == 1
        _, cached = await admin(a, "GET", "/admin/model-cache")
        assert [e["backend"] for e in cached["entries"]] == [name, name]
    finally:
        await admin(a, "DELETE", f"/admin/model-cache/{name}")


async def test_a_backend_whose_api_key_env_is_unset_is_never_called_and_says_which_variable(
    gateway_factory: Any, sim_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without its key the upstream would answer 401 and start a cooldown that names nothing: the
    backend is not called at all, its lanes are absent, and its status and one start-up warning
    name the variable."""
    import asyncio
    import uuid

    from tests.cli.test_admin import laneway

    variable = f"LANEWAY_TEST_KEY_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.delenv(variable, raising=False)
    sim = sim_factory(family="openai", api_key="sim-secret")
    caplog.set_level("WARNING", logger="laneway")
    backend = {"provider": "openai", "base_url": sim.url, "api_key_env": variable}
    gw = gateway_factory({"auth": KEYS, "backends": {"oai": backend}})

    for _ in range(2):  # the start-up refresh, and an operator's
        _, body = await admin(gw, "POST", "/admin/refresh?backend=oai")
        (status,) = body["backends"]
        assert status["unset_key_env"] == variable
        assert status["last_error"].startswith(f"api_key_env {variable} is not set")
        assert (status["lanes"], status["cooldown_until"]) == (0, None)
    assert sim.stats.requests_by_path.get("/v1/models", 0) == 0
    said = [r.getMessage() for r in caplog.records if variable in r.getMessage()]
    assert said == [
        f"backend 'oai': api_key_env {variable} is not set; its models are not served until it is set "
        "and laneway restarted"
    ]
    async with client(gw) as c:
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert sim.stats.requests_by_path.get("/v1/chat/completions", 0) == 0

    done = await asyncio.to_thread(laneway, "backends", "--url", gw.url, "--key", ADMIN_KEY)
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("oai ")]
    assert f"api_key_env {variable} is not set" in row


async def test_a_refused_key_from_an_api_key_env_names_the_variable_in_the_cooldown(
    gateway_factory: Any, sim_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = "LANEWAY_TEST_WRONG_KEY"
    monkeypatch.setenv(variable, "not-the-sims-key")
    sim = sim_factory(family="openai", api_key="sim-secret")
    backend = {"provider": "openai", "base_url": sim.url, "api_key_env": variable}
    gw = gateway_factory({"auth": KEYS, "backends": {"oai": backend}})
    _, body = await admin(gw, "GET", "/admin/backends")
    (status,) = body["backends"]
    assert status["unset_key_env"] is None
    assert status["cooldown_until"] is not None
    assert status["cooldown_reason"].endswith(f"(the key in api_key_env {variable})")
    assert status["last_error"] == status["cooldown_reason"]
