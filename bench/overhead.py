"""Gateway overhead: the same simulated upstream called directly and through laneway, side by
side in one run, at several concurrencies, streamed and not, with an instant and a 50 ms upstream.

    make bench                      # full matrix, ~3 s per cell
    make bench ARGS="--quick"       # fewer, shorter cells

The gateway runs pinned to core 0 ("laneway on one core"); the simulated upstream and this load
generator share core 1. Their own ceiling is the "direct" figure at latency 0 — when it is far
above the gateway's figure, they are not what limits the gateway's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from bench.loadgen import Result, run

KEY = "lw-bench-key"
MODEL = "bench-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], core: int) -> list[str]:
    return (
        ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else cmd
    )


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


@dataclass
class Procs:
    sim: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    sim_port: int
    gw_port: int

    def stop(self) -> None:
        for p in (self.gateway, self.sim):
            p.terminate()
        for p in (self.gateway, self.sim):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def start(latency: float, workdir: Path, backend: dict[str, object] | None = None, **extra: object) -> Procs:
    """The simulated upstream (core 1) and a gateway in front of it (core 0); ``backend``: more
    settings of its backend (``slots``); ``extra``: config sections laid over the gateway's
    (``bench.cluster`` gives it PostgreSQL and Redis)."""
    laneway = [sys.executable, "-m", "laneway"]
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(
        pinned(
            [
                *laneway,
                "sim",
                "--family",
                "openai",
                "--port",
                str(sim_port),
                "--models",
                MODEL,
                "--latency",
                str(latency),
            ],
            1,
        ),
        stdout=subprocess.DEVNULL,
    )
    config = {
        "server": {"port": gw_port, "log_level": "warning"},
        "storage": {"data_dir": str(workdir / f"data-{gw_port}")},
        "auth": {"keys": [{"name": "bench", "key": KEY}]},
        "backends": {
            "sim": {"provider": "openai", "base_url": f"http://127.0.0.1:{sim_port}/v1", **(backend or {})}
        },
    }
    for section, value in extra.items():
        config[section] = {**config.get(section, {}), **value} if isinstance(value, dict) else value
    cfg = workdir / f"bench-{gw_port}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    wait_http(f"http://127.0.0.1:{sim_port}/v1/models")
    gateway = subprocess.Popen(pinned([*laneway, "serve", "-c", str(cfg)], 0), stdout=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{gw_port}/healthz")
    return Procs(sim, gateway, sim_port, gw_port)


def body(stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello there, benchmark."}],
            "stream": stream,
        }
    )


@dataclass
class Row:
    latency_ms: int
    stream: bool
    concurrency: int
    direct: Result
    gateway: Result

    def cells(self) -> list[str]:
        d, g = self.direct, self.gateway
        ratio = g.rps / d.rps if d.rps else float("nan")
        return [
            f"{self.latency_ms}",
            "yes" if self.stream else "no",
            f"{self.concurrency}",
            f"{d.rps:,.0f}",
            f"{g.rps:,.0f}",
            f"{ratio:.2f}",
            f"{d.p50_ms:.2f}",
            f"{g.p50_ms:.2f}",
            f"{g.p50_ms - d.p50_ms:+.2f}",
            f"{d.p99_ms:.2f}",
            f"{g.p99_ms:.2f}",
            f"{g.ttfb_p50_ms - d.ttfb_p50_ms:+.2f}" if self.stream else "",
            f"{d.errors}/{g.errors}",
        ]


HEADER = [
    "upstream ms",
    "stream",
    "conc",
    "direct rps",
    "laneway rps",
    "ratio",
    "direct p50",
    "laneway p50",
    "added p50",
    "direct p99",
    "laneway p99",
    "added TTFT p50",
    "errors d/l",
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    return markdown_table(HEADER, [r.cells() for r in rows])


async def measure(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="laneway-bench-"))
    for latency in args.latencies:
        procs = start(latency / 1000, workdir)
        try:
            for stream in (False, True):
                for conc in args.concurrency:
                    payload = body(stream)
                    direct = await run(
                        "127.0.0.1",
                        procs.sim_port,
                        "/v1/chat/completions",
                        payload,
                        concurrency=conc,
                        duration=args.duration,
                    )
                    gateway = await run(
                        "127.0.0.1",
                        procs.gw_port,
                        "/v1/chat/completions",
                        payload,
                        headers={"authorization": f"Bearer {KEY}"},
                        concurrency=conc,
                        duration=args.duration,
                    )
                    row = Row(latency, stream, conc, direct, gateway)
                    rows.append(row)
                    print("  ".join(row.cells()), flush=True)
        finally:
            procs.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds measured per cell (after warm-up)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--latencies", type=int, nargs="+", default=[0, 50], help="upstream latency, ms")
    parser.add_argument("--quick", action="store_true", help="1 s cells")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    if args.quick:
        args.duration = 1.0
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator shares core 1 with the upstream
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print("  ".join(HEADER), flush=True)
    rows = runner(measure(args))
    text = table(rows)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
