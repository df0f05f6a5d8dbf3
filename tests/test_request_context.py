"""Request context in the logs: every line written while serving a request carries its id (and
the lane being tried), without anyone passing it along (``laneway.context``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import orjson
import pytest

from laneway import context
from laneway.inventory.lanes import compose_lane_id
from laneway.logs import JsonFormatter, TextFormatter
from laneway.testing import captured_logs
from tests.conftest import CLIENT_KEY, Sim

pytestmark = pytest.mark.anyio
MODEL = "gpt-4o-mini"


def _record(message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("laneway.test", logging.WARNING, "", 0, message, (), None)
    record.__dict__.update(extra)
    return record


def test_a_line_inside_a_request_carries_its_id_and_lane_outside_none() -> None:
    json, text = JsonFormatter(), TextFormatter()
    assert "request_id" not in orjson.loads(json.format(_record("outside")))
    with context.request("req-1"):
        assert orjson.loads(json.format(_record("inside")))["request_id"] == "req-1"
        context.note_lane("lane-a")
        line = orjson.loads(json.format(_record("trying")))
        assert (line["request_id"], line["lane"]) == ("req-1", "lane-a")
        # What the call site says wins over the context (the breaker names its own lane).
        assert orjson.loads(json.format(_record("x", lane="lane-b")))["lane"] == "lane-b"
        assert text.format(_record("plain")).endswith("plain [req-1 lane-a]")
    assert context.current() is None
    context.note_lane("nowhere")  # outside a request: nothing to note, no error


async def test_concurrent_requests_keep_their_own_context() -> None:
    seen: dict[str, str] = {}

    async def serve(rid: str) -> None:
        with context.request(rid):
            await asyncio.sleep(0)
            ctx = context.current()
            assert ctx is not None
            seen[rid] = ctx.request_id

    await asyncio.gather(*(serve(f"r{i}") for i in range(20)))
    assert seen == {f"r{i}": f"r{i}" for i in range(20)}


async def test_the_breaker_line_a_request_causes_carries_that_requests_id(
    sim_factory: Any, gateway_factory: Any
) -> None:
    """The breaker logs only its lane; the request id comes from the context."""
    sim: Sim = sim_factory(family="openai", models=[MODEL])
    sim.options.fail_status = 500
    config = {
        "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
        "backends": {"only": {"provider": "openai", "base_url": sim.url}},
        "routing": {"breaker": {"failures": 1, "window": 60, "cooldown": 30}},
    }
    gw = gateway_factory(config, {"only": sim})
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    with captured_logs() as lines, pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "ctx-test-1"},
        )
    assert failed.value.response.headers["x-request-id"] == "ctx-test-1"
    lane = compose_lane_id(
        tier="cloud", provider_family="openai", instance_id="only", type="chat", model=MODEL
    )
    opened = [ln for ln in lines if ln["event"] == "breaker open"]
    assert len(opened) == 1, lines
    assert (opened[0]["request_id"], opened[0]["lane"]) == ("ctx-test-1", lane)
    # The access line, written as the response ended, has the same id; lines outside have none.
    assert any(ln["logger"] == "laneway.access" and ln["request_id"] == "ctx-test-1" for ln in lines)
