"""The one SSE codec: what it frames, a decoder reads back, cut anywhere."""

from __future__ import annotations

import pytest

from laneway import sse


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
