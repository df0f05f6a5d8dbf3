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

from bench.loadgen import run
from bench.overhead import KEY, body, start

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def measure(concurrency: int, duration: float) -> list[str]:
    procs = start(0, Path(tempfile.mkdtemp(prefix="laneway-cpu-")))
    out = []
    try:
        for stream in (False, True):
            payload, headers = body(stream), {"authorization": f"Bearer {KEY}"}
            path = "/v1/chat/completions"
            await run("127.0.0.1", procs.gw_port, path, payload, headers=headers, concurrency=4, duration=1)
            before = cpu_seconds(procs.gateway.pid)
            result = await run(
                "127.0.0.1",
                procs.gw_port,
                path,
                payload,
                headers=headers,
                concurrency=concurrency,
                duration=duration,
            )
            used = cpu_seconds(procs.gateway.pid) - before
            served = result.rps * duration
            kind = "streamed" if stream else "non-streamed"
            out.append(f"{kind}: {used / served * 1e6:.0f} µs CPU per request ({result.rps:,.0f} requests/s)")
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
