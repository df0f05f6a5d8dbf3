"""What each inbound dialect costs: the gateway's CPU time per request for the same call made
through each door, side by side in one run, against an instant OpenAI-family simulated upstream.

    python -m bench.dialects                # concurrency 16, 4 s per door and shape
    python -m bench.dialects --duration 8

OpenAI's ``/v1/chat/completions`` is the baseline: its body goes upstream as sent. The others are
translated to it and their answers back (``laneway.dialects``); the ratio says what that costs.
Requests that fail are counted and reported, so a broken door cannot pass for a fast one.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import orjson

from bench.cpu import cpu_per_request
from bench.overhead import KEY, MODEL, start

TEXT = "Hello there, benchmark."


def doors(stream: bool) -> list[tuple[str, str, bytes]]:
    """(name, path, body) of the same one-turn call through each dialect."""
    user = [{"role": "user", "content": TEXT}]
    return [
        (
            "openai chat",
            "/v1/chat/completions",
            orjson.dumps({"model": MODEL, "messages": user, "stream": stream}),
        ),
        (
            "anthropic messages",
            "/v1/messages",
            orjson.dumps({"model": MODEL, "max_tokens": 256, "messages": user, "stream": stream}),
        ),
        (
            "openai responses",
            "/v1/responses",
            orjson.dumps({"model": MODEL, "input": TEXT, "stream": stream, "store": False}),
        ),
        ("ollama chat", "/api/chat", orjson.dumps({"model": MODEL, "messages": user, "stream": stream})),
    ]


async def measure(concurrency: int, duration: float) -> list[str]:
    procs = start(0, Path(tempfile.mkdtemp(prefix="laneway-dialects-")))
    headers = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    lines = []
    try:
        for stream in (False, True):
            base: float | None = None
            for name, path, payload in doors(stream):
                per, result = await cpu_per_request(
                    procs, path, payload, headers, concurrency=concurrency, duration=duration
                )
                base = base or per
                kind = "streamed" if stream else "whole"
                lines.append(
                    f"{kind:8} {name:20} {per:6.0f} µs CPU/request  x{per / base:4.2f}"
                    f"  ({result.rps:,.0f} req/s, {result.errors} errors)"
                )
    finally:
        procs.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    print("\n".join(asyncio.run(measure(args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
