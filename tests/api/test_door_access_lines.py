"""Every door names its dialect in the access line (set in one place, ``Inbound.speak``), with
the operation the router served, whichever lane served it."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningGateway
from tests.e2e.test_anthropic_sdk import access_line

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]

DOORS = [
    ("/v1/chat/completions", {"model": "claude-sonnet-4-6", "messages": HI}, "openai", "chat"),
    ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 20, "messages": HI}, "anthropic", "chat"),
    ("/v1/responses", {"model": "llama3.2:3b", "input": "hi", "store": False}, "responses", "chat"),
    ("/api/chat", {"model": "gpt-4o-mini", "messages": HI, "stream": False}, "ollama", "chat"),
    ("/api/embed", {"model": "embed", "input": "x"}, "ollama", "embedding"),
]


@pytest.mark.parametrize(("path", "body", "dialect", "operation"), DOORS)
async def test_each_door_names_its_dialect_in_the_access_line(
    gw: RunningGateway,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, Any],
    dialect: str,
    operation: str,
) -> None:
    caplog.set_level(logging.INFO, logger="laneway.access")
    headers = {"authorization": f"Bearer {gw.key}", "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.url + path, data=orjson.dumps(body), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        request_id = resp.headers["x-request-id"]
    line = access_line(caplog, request_id)
    assert (line["dialect"], line["operation"], line["path"]) == (dialect, operation, path)
