"""The gateway's CPU time per request: steadier than throughput on a noisy machine.

    python -m bench.cpu            # an instant simulated upstream, concurrency 16, 6 s per shape

The gateway's user+system time is read from /proc before and after a run of the load generator
and divided by the requests served; run it from two checkouts, alternating, to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from bench.loadgen import Result, run
from bench.overhead import KEY, Procs, body, start

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def cpu_per_request(
    procs: Procs, path: str, payload: bytes, headers: dict[str, str], *, concurrency: int, duration: float
) -> tuple[float, Result]:
    """After a 1 s warm-up, the gateway's CPU time (µs) per request it served in a run of
    ``duration`` seconds at ``concurrency``, and that run's result."""
    port = procs.gw_port
    await run("127.0.0.1", port, path, payload, headers=headers, concurrency=4, duration=1)
    before = cpu_seconds(procs.gateway.pid)
    result = await run(
        "127.0.0.1", port, path, payload, headers=headers, concurrency=concurrency, duration=duration
    )
    used = cpu_seconds(procs.gateway.pid) - before
    return used / max(1, result.requests) * 1e6, result


async def measure(concurrency: int, duration: float) -> list[str]:
    procs = start(0, Path(tempfile.mkdtemp(prefix="laneway-cpu-")))
    out = []
    try:
        for stream in (False, True):
            headers = {"authorization": f"Bearer {KEY}"}
            per, result = await cpu_per_request(
                procs,
                "/v1/chat/completions",
                body(stream),
                headers,
                concurrency=concurrency,
                duration=duration,
            )
            kind = "streamed" if stream else "non-streamed"
            out.append(f"{kind}: {per:.0f} µs CPU per request ({result.rps:,.0f} requests/s)")
    finally:
        procs.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    print("  |  ".join(asyncio.run(measure(args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
