"""The Anthropic surface over raw HTTP: what a client that is not an SDK may send (bad JSON, no
key, a path no route serves, a GET where a POST goes), each answered in Anthropic's error shape
with the right status; the model list in both shapes, paged; both auth headers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.conftest import RunningGateway

pytestmark = pytest.mark.anyio

VERSION = {"anthropic-version": "2023-06-01"}


async def call(
    gw: RunningGateway,
    method: str,
    path: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    key: bool = True,
) -> tuple[int, CIMultiDict[str], Any]:
    sent = {**VERSION, **({"x-api-key": gw.key} if key else {}), **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, gw.url + path, json=body, data=data, headers=sent) as response,
    ):
        raw = await response.read()
        try:
            parsed: Any = await response.json(content_type=None)
        except ValueError:
            parsed = raw
        return response.status, CIMultiDict(response.headers), parsed


def assert_anthropic_error(body: Any, kind: str) -> None:
    assert body["type"] == "error", body
    assert body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


MESSAGE = {"model": "llama3.2:3b", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


async def test_both_auth_headers_and_none(gw: RunningGateway) -> None:
    status, _, body = await call(gw, "POST", "/v1/messages", body=MESSAGE)
    assert status == 200, body
    assert body["type"] == "message"
    status, _, body = await call(
        gw, "POST", "/v1/messages", body=MESSAGE, key=False, headers={"authorization": f"Bearer {gw.key}"}
    )
    assert status == 200, body
    status, _, body = await call(gw, "POST", "/v1/messages", body=MESSAGE, key=False)
    assert status == 401
    assert_anthropic_error(body, "authentication_error")


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"", "empty"), (b"{nope", "not valid JSON"), (b"[1, 2]", "must be a JSON object")],
)
async def test_a_body_that_is_not_an_object(gw: RunningGateway, data: bytes, words: str) -> None:
    status, headers, body = await call(
        gw, "POST", "/v1/messages", data=data, headers={"content-type": "application/json"}
    )
    assert status == 400
    assert_anthropic_error(body, "invalid_request_error")
    assert words in body["error"]["message"]
    assert body["request_id"] == headers["x-request-id"]


async def test_paths_no_route_serves_answer_in_anthropics_shape(gw: RunningGateway) -> None:
    status, _, body = await call(gw, "POST", "/v1/messages/batches", body={})
    assert status == 404
    assert_anthropic_error(body, "not_found_error")
    status, _, body = await call(gw, "GET", "/v1/messages")
    assert status == 405
    assert_anthropic_error(body, "invalid_request_error")


async def test_a_query_string_is_accepted(gw: RunningGateway) -> None:
    status, _, body = await call(gw, "POST", "/v1/messages?beta=true", body=MESSAGE)
    assert status == 200, body


async def test_a_forced_tool_on_an_ollama_lane_is_emulated(gw: RunningGateway) -> None:
    tools = [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    request = {**MESSAGE, "tools": tools, "tool_choice": {"type": "any"}}
    status, headers, body = await call(gw, "POST", "/v1/messages", body=request)
    assert status == 200, body
    assert headers["x-laneway-emulated"] == "forced_tool"
    assert [b["type"] for b in body["content"]] == ["tool_use"]
    assert body["content"][0]["name"] == "f"
    assert body["stop_reason"] == "tool_use"


async def test_a_lane_that_cannot_serve_the_request_is_a_422_in_anthropics_shape(gw: RunningGateway) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    request = {**MESSAGE, "messages": [{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]}
    status, _, body = await call(gw, "POST", "/v1/messages", body=request)  # llama3.2 cannot see
    assert status == 422
    assert_anthropic_error(body, "invalid_request_error")
    assert "needs vision" in body["error"]["message"]


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"type": "url"}, "source.url"),
        ({"type": "base64", "data": "AAAA"}, "source.media_type"),
        ({"type": "file"}, "source.file_id"),
        ("a string", "'source' must be an object"),
    ],
)
async def test_an_image_source_without_what_its_type_needs_is_a_400(
    gw: RunningGateway, source: object, field: str
) -> None:
    request = {**MESSAGE, "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}
    status, _, body = await call(gw, "POST", "/v1/messages", body=request)
    assert status == 400
    assert_anthropic_error(body, "invalid_request_error")
    assert field in body["error"]["message"]
    assert body["error"]["message"].startswith("messages.0.content.0")


async def test_count_tokens_validates_its_own_shape(gw: RunningGateway) -> None:
    status, _, body = await call(gw, "POST", "/v1/messages/count_tokens", body={"model": "llama3.2:3b"})
    assert status == 400
    assert_anthropic_error(body, "invalid_request_error")
    assert body["error"]["message"] == "messages: Field required"
    status, headers, body = await call(
        gw, "POST", "/v1/messages/count_tokens", body={k: v for k, v in MESSAGE.items() if k != "max_tokens"}
    )
    assert status == 200
    assert headers["x-laneway-token-count"] == "estimated"
    assert body["input_tokens"] >= 1


async def test_models_in_both_shapes(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/models") as refused:
            assert refused.status == 401  # the OpenAI route's own key check, and its own shape
            assert "type" not in await refused.json()
        async with http.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {gw.key}"}) as response:
            plain = await response.json()
    assert plain["object"] == "list"
    status, _, page = await call(gw, "GET", "/v1/models")
    assert status == 200
    ids = [m["id"] for m in page["data"]]
    assert page["first_id"] == ids[0]
    assert page["last_id"] == ids[-1]
    assert page["has_more"] is False
    assert all(set(m) == {"type", "id", "display_name", "created_at"} for m in page["data"])
    status, _, before = await call(gw, "GET", f"/v1/models?before_id={ids[3]}&limit=2")
    assert [m["id"] for m in before["data"]] == ids[1:3]
    assert before["has_more"] is True
    status, _, after = await call(gw, "GET", f"/v1/models?after_id={ids[-2]}")
    assert [m["id"] for m in after["data"]] == ids[-1:]
    assert after["has_more"] is False
    status, _, bad = await call(gw, "GET", "/v1/models?limit=0")
    assert status == 400
    assert_anthropic_error(bad, "invalid_request_error")
    status, _, denied = await call(gw, "GET", "/v1/models", key=False)
    assert status == 401
    assert_anthropic_error(denied, "authentication_error")
