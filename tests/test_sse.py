"""The one SSE codec: what it frames, a decoder reads back, cut anywhere."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic._streaming as anthropic_streaming
import openai._streaming as openai_streaming
import orjson
import pytest

from laneway import sse
from laneway.sim import SimOptions, build_sim_app
from laneway.testing import ServerThread


def test_encode_frames_names_ids_and_json() -> None:
    assert sse.encode({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.encode(b"x", event="task", id="7") == b"event: task\nid: 7\ndata: x\n\n"
    assert sse.encode("two\nlines") == b"data: two\ndata: lines\n\n"
    assert sse.comment("ping") == b": ping\n\n"
    with pytest.raises(ValueError, match="line break"):
        sse.encode(b"x", event="bad\nname")


def test_decoder_reads_back_what_encode_wrote_whatever_the_cuts() -> None:
    stream = (
        sse.comment("keep-alive")
        + sse.encode({"n": 1}, event="chunk")
        + sse.encode("two\nlines")
        + sse.encode(b"[DONE]")
    )
    crlf = stream.replace(b"\n", b"\r\n")
    for raw in (stream, crlf):
        for size in (1, 2, 3, 7, len(raw)):
            decoder = sse.Decoder()
            events = []
            for i in range(0, len(raw), size):
                events += decoder.feed(raw[i : i + size])
            events += decoder.close()
            assert [(e.event, e.data) for e in events] == [
                ("chunk", b'{"n":1}'),
                ("message", b"two\nlines"),
                ("message", b"[DONE]"),
            ], size
    assert events[0].json() == {"n": 1}


def test_a_last_event_without_its_blank_line_counts_at_close() -> None:
    decoder = sse.Decoder()
    assert decoder.feed(b"event: result\ndata: {}") == []
    assert [(e.event, e.data) for e in decoder.close()] == [("result", b"{}")]
    assert list(sse.data_of(b"data: a\n\n: comment\n\nevent: x\n\ndata: b")) == [b"a", b"b"]


def test_boundary_finds_the_end_of_the_last_whole_event() -> None:
    assert sse.boundary(b"data: a") == 0
    assert sse.boundary(b"data: a\n\ndata: b") == 9
    assert sse.boundary(b"data: a\r\n\r\n") == 11


def test_an_event_that_never_ends_is_refused_not_buffered_forever() -> None:
    decoder = sse.Decoder(max_bytes=64)
    decoder.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(sse.EventTooLarge):
        decoder.feed(b"data: " + b"y" * 40 + b"\n")


def test_data_of_one_plain_event_and_the_general_shapes_alike() -> None:
    assert list(sse.data_of(b'data: {"a":1}\n\n')) == [b'{"a":1}']
    assert list(sse.data_of(b"data: \n\n")) == [b""]
    # the shapes beside the plain one: CRLF (or a CR before the blank line), no space, two lines
    assert list(sse.data_of(b"data: [DONE]\r\n\r\n")) == [b"[DONE]"]
    assert list(sse.data_of(b"data: [DONE]\r\n\n")) == [b"[DONE]"]
    assert list(sse.data_of(b"data:x\n\n")) == [b"x"]
    assert list(sse.data_of(b"data: a\ndata: b\n\n")) == [b"a\nb"]
    assert list(sse.data_of(b"data: a\nX")) == [b"a"]  # a cut-off tail: "X" is a field, not data


def test_splitter_passes_whole_events_on_untouched_whatever_the_cuts() -> None:
    stream = (
        sse.encode({"n": 1}) + sse.comment("keep-alive") + b"data: a\r\n\r\n" + sse.encode(b"x", event="e")
    )
    for size in (1, 2, 5, 11, len(stream)):
        splitter = sse.Splitter()
        out = [splitter.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
        assert b"".join(out) == stream, size
        assert all(sse.boundary(piece) == len(piece) for piece in out if piece), size
        assert splitter.close() == b""
    one = sse.encode({"n": 1})
    assert sse.Splitter().feed(one) is one  # the common case is not copied


def test_splitter_keeps_an_unended_tail_for_close_and_refuses_one_too_large() -> None:
    splitter = sse.Splitter()
    assert splitter.feed(b"data: a\n\ndata: b") == b"data: a\n\n"
    assert splitter.close() == b"data: b"
    small = sse.Splitter(max_bytes=16)
    assert small.feed(b"data: 0123456789") == b""
    with pytest.raises(sse.EventTooLarge):
        small.feed(b"abcdef")


# --- the codec reads the sim's streams as the official SDKs do ----------------------------------
# The sim frames its SSE by hand, on purpose (it stands in for the real upstreams; sharing the
# codec would hide a codec bug). So: what the sim writes, sse.Decoder reads event for event as
# the openai and anthropic SDKs' own decoders read it, however the bytes are cut.

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
SIM_STREAMS = {
    "openai chat with usage": (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "openai tool call": (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}],
            "stream": True,
        },
    ),
    "openai completion": ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "Once", "stream": True}),
    "anthropic text": (
        "/v1/messages",
        {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "anthropic thinking and tool use": (
        "/v1/messages",
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 2000,
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"name": "weather", "input_schema": WEATHER}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    """A sim of each family that streams SSE, by family."""
    with (
        ServerThread(build_sim_app(SimOptions(family="openai"))) as openai_url,
        ServerThread(build_sim_app(SimOptions(family="anthropic"))) as anthropic_url,
    ):
        yield {"openai": openai_url, "anthropic": anthropic_url}


def sim_stream(url: str, path: str, body: dict[str, Any]) -> bytes:
    request = urllib.request.Request(
        url + path,
        data=orjson.dumps({**body, "stream": True}),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw: bytes = response.read()
    return raw


@pytest.mark.parametrize("name", list(SIM_STREAMS))
def test_the_sims_streams_decode_event_for_event_as_the_official_sdks_read_them(
    sims: dict[str, str], name: str
) -> None:
    path, body = SIM_STREAMS[name]
    raw = sim_stream(sims[name.split()[0]], path, body)
    sdk_decoder = anthropic_streaming.SSEDecoder if path == "/v1/messages" else openai_streaming.SSEDecoder
    sdk = [(e.event or "message", e.data, e.id) for e in sdk_decoder().iter_bytes(iter([raw]))]
    assert len(sdk) > 3
    if path == "/v1/messages":
        # the anthropic SDK skips an unnamed event: every event the sim sends has its name
        assert all(event != "message" for event, _, _ in sdk)
    else:
        assert sdk[-1][1] == "[DONE]"
    for size in (1, 3, 64, len(raw)):
        decoder = sse.Decoder()
        ours = [e for i in range(0, len(raw), size) for e in decoder.feed(raw[i : i + size])]
        ours += decoder.close()
        assert [(e.event, e.data.decode(), e.id) for e in ours] == sdk, (name, size)


@pytest.mark.parametrize(
    "events",
    [
        b"data: x\n\n",
        b"data: x\r\n\n",
        b"data: a\n\ndata: b\n\ndata: [DONE]\n\n",
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b": keep-alive\n\ndata: a\n\n",
        b"event: e\ndata: z\n\ndata: a\n\n",
        b"data: l1\ndata: l2\n\ndata: c\n\n",
        b"data: a\n\ndata: tail",
        b"data:nospace\n\n",
    ],
)
def test_data_of_reads_what_the_general_parse_reads(events: bytes) -> None:
    """The pass-through's quick reading of whole events never disagrees with the codec's own."""
    assert sse.data_of(events) == [e.data for e in sse.parse(events)]
