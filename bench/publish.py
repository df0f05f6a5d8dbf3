"""What the publisher relay costs: one simulated Ollama reached three ways, side by side in one
run, at several concurrencies, streamed and not, with an instant and a 50 ms upstream.

    make bench-publish                      # full matrix, ~3 s per path and cell
    make bench-publish ARGS="--quick"       # concurrency 1 and 16, 1 s cells

- direct: the sim's OpenAI-compatible path (``/v1/chat/completions``), no gateway;
- declared: through the gateway to a declared ``ollama`` backend pointing at the sim;
- virtual: through the gateway to the lane that ``laneway publish`` made of the same sim
  (model ``bench-virtual``): gateway → control stream → publisher → sim → result/chunk posts.

Both gateway paths reach the sim by its native Ollama API through the same adapter, so
virtual/declared is the price of the relay alone; virtual/direct is the whole bill.

The gateway runs pinned to core 0, like ``bench.overhead``; the sim, the load generator and the
publisher share core 1 (a publisher lives beside its model server, not beside the gateway). The
"direct" figure at latency 0 is the ceiling of core 1 without the publisher on it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.loadgen import Result, run
from bench.overhead import KEY, MODEL, body, free_port, markdown_table, pinned, wait_http

ADMIN_KEY = "lw-bench-admin"
PUBLISH_TOKEN = "lw-bench-publish-token"
PUBLISHER = "bench-box"
VIRTUAL = "bench-virtual"
VIRTUAL_LANE = f"fleet:virtual:{PUBLISHER}:chat:{VIRTUAL}"
PATHS = ("direct", "declared", "virtual")
RESULTS = Path(__file__).parent / "results"


@dataclass
class Procs:
    sim: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    publisher: subprocess.Popen[bytes]
    sim_port: int
    gw_port: int
    publisher_log: Path

    def stop(self) -> None:
        # The publisher first, alone: it unregisters while the gateway is still up.
        for group in ((self.publisher,), (self.gateway, self.sim)):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def admin_lanes(gw_port: int) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{gw_port}/admin/lanes", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        lanes: list[dict[str, Any]] = orjson.loads(resp.read())["lanes"]
        return lanes


def wait_lanes(procs: Procs, timeout: float = 30.0) -> None:
    """Until the declared lane of MODEL and the virtual lane are both healthy."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if procs.publisher.poll() is not None:
            break
        try:
            seen = admin_lanes(procs.gw_port)
        except OSError:
            seen = []
        healthy = [ln for ln in seen if ln["health"] == "healthy"]
        virtual = any(ln["id"] == VIRTUAL_LANE for ln in healthy)
        declared = any(ln["backend"] == "sim" and ln["model"] == MODEL for ln in healthy)
        if virtual and declared:
            return
        time.sleep(0.1)
    log = procs.publisher_log.read_text(errors="replace")[-2000:]
    lanes = [(ln["id"], ln["health"]) for ln in seen]
    raise RuntimeError(f"lanes not healthy within {timeout}s: {lanes}\npublisher output:\n{log}")


def start(latency: float, workdir: Path, max_concurrency: int) -> Procs:
    laneway = [sys.executable, "-m", "laneway"]
    sim_port, gw_port = free_port(), free_port()
    sim_cmd = [*laneway, "sim", "--family", "ollama", "--port", str(sim_port), "--models", MODEL]
    sim = subprocess.Popen(pinned([*sim_cmd, "--latency", str(latency)], 1), stdout=subprocess.DEVNULL)
    sim_url = f"http://127.0.0.1:{sim_port}"
    config = {
        "server": {"port": gw_port, "log_level": "warning"},
        "storage": {"data_dir": str(workdir / f"data-{gw_port}")},
        "auth": {"keys": [{"name": "bench", "key": KEY}, {"name": "ops", "key": ADMIN_KEY, "admin": True}]},
        # An ollama backend is tier local (4 slots by default): give it the publisher's slots.
        "backends": {
            "sim": {
                "provider": "ollama",
                "base_url": sim_url,
                "slots": max_concurrency,
                "stream_holds_slot": True,  # as a virtual lane's pool does
            }
        },
        "publishers": {"tokens": [{"name": "bench", "token": PUBLISH_TOKEN, "names": ["bench-*"]}]},
    }
    cfg = workdir / f"bench-{gw_port}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    wait_http(f"{sim_url}/v1/models")
    gateway = subprocess.Popen(pinned([*laneway, "serve", "-c", str(cfg)], 0), stdout=subprocess.DEVNULL)
    gw_url = f"http://127.0.0.1:{gw_port}"
    wait_http(f"{gw_url}/healthz")
    publisher_log = workdir / f"publish-{gw_port}.log"
    with publisher_log.open("wb") as out:
        publisher = subprocess.Popen(
            pinned(
                [
                    *laneway,
                    "publish",
                    "--gateway",
                    gw_url,
                    "--token",
                    PUBLISH_TOKEN,
                    "--backend",
                    sim_url,
                    "--name",
                    PUBLISHER,
                    "--alias",
                    f"{MODEL}={VIRTUAL}",
                    "--max-concurrency",
                    str(max_concurrency),
                    "--state-file",
                    str(workdir / f"publish-{gw_port}.json"),
                ],
                1,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    procs = Procs(sim, gateway, publisher, sim_port, gw_port, publisher_log)
    try:
        wait_lanes(procs)
    except BaseException:
        procs.stop()
        raise
    return procs


def payload(model: str, stream: bool) -> bytes:
    return orjson.dumps({**orjson.loads(body(stream)), "model": model})


def summary(r: Result) -> dict[str, Any]:
    return {
        "requests": r.requests,
        "errors": r.errors,
        "rps": round(r.rps, 1),
        "p50_ms": round(r.p50_ms, 3),
        "p99_ms": round(r.p99_ms, 3),
        "ttft_p50_ms": round(r.ttfb_p50_ms, 3),
        "ttft_p99_ms": round(r.pct(r.ttfb, 0.99) * 1000, 3),
    }


def _share(a: Result, b: Result) -> float:
    return a.rps / b.rps if b.rps else float("nan")


@dataclass
class Row:
    latency_ms: int
    stream: bool
    concurrency: int
    direct: Result
    declared: Result
    virtual: Result

    def as_dict(self) -> dict[str, Any]:
        v, dl, d = self.virtual, self.declared, self.direct
        return {
            "upstream_ms": self.latency_ms,
            "stream": self.stream,
            "concurrency": self.concurrency,
            **{name: summary(getattr(self, name)) for name in PATHS},
            "virtual_over_declared": {
                "rps_share": round(_share(v, dl), 3),
                "added_p50_ms": round(v.p50_ms - dl.p50_ms, 3),
                "added_ttft_p50_ms": round(v.ttfb_p50_ms - dl.ttfb_p50_ms, 3) if self.stream else None,
            },
            "virtual_over_direct": {
                "rps_share": round(_share(v, d), 3),
                "added_p50_ms": round(v.p50_ms - d.p50_ms, 3),
                "added_ttft_p50_ms": round(v.ttfb_p50_ms - d.ttfb_p50_ms, 3) if self.stream else None,
            },
        }

    def cells(self) -> list[str]:
        v, dl, d = self.virtual, self.declared, self.direct
        results = (d, dl, v)
        return [
            f"{self.latency_ms}",
            "yes" if self.stream else "no",
            f"{self.concurrency}",
            " / ".join(f"{r.rps:,.0f}" for r in results),
            " / ".join(f"{r.p50_ms:.2f}" for r in results),
            " / ".join(f"{r.p99_ms:.2f}" for r in results),
            " / ".join(f"{r.ttfb_p50_ms:.2f}" for r in results) if self.stream else "",
            f"{v.p50_ms - dl.p50_ms:+.2f}",
            f"{v.p50_ms - d.p50_ms:+.2f}",
            f"{v.ttfb_p50_ms - dl.ttfb_p50_ms:+.2f}" if self.stream else "",
            f"{_share(v, dl):.0%}",
            f"{_share(v, d):.0%}",
            "/".join(str(r.errors) for r in results),
        ]


HEADER = [
    "upstream ms",
    "stream",
    "conc",
    "rps direct / declared / virtual",
    "p50 ms d / dl / v",
    "p99 ms d / dl / v",
    "TTFT p50 ms d / dl / v",
    "added p50 v-dl",
    "added p50 v-d",
    "added TTFT v-dl",
    "v/dl rps",
    "v/d rps",
    "errors d/dl/v",
]


def table(rows: list[Row]) -> str:
    return markdown_table(HEADER, [r.cells() for r in rows])


def publisher_errors(log: Path) -> list[str]:
    """The distinct ``last error`` the publisher showed (its status line, one per change)."""
    found: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        _, sep, err = line.partition("last error: ")
        if sep:
            found.setdefault(err.strip(), None)
    return list(found)


async def measure(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="laneway-bench-publish-"))
    max_concurrency = max(args.concurrency)
    try:
        for latency in args.latencies:
            procs = start(latency / 1000, workdir, max_concurrency)
            try:
                for stream in (False, True):
                    for conc in args.concurrency:
                        got: dict[str, Result] = {}
                        for path, port, model, headers in (
                            ("direct", procs.sim_port, MODEL, {}),
                            ("declared", procs.gw_port, MODEL, {"authorization": f"Bearer {KEY}"}),
                            ("virtual", procs.gw_port, VIRTUAL, {"authorization": f"Bearer {KEY}"}),
                        ):
                            got[path] = await run(
                                "127.0.0.1",
                                port,
                                "/v1/chat/completions",
                                payload(model, stream),
                                headers=headers,
                                concurrency=conc,
                                duration=args.duration,
                            )
                        row = Row(latency, stream, conc, got["direct"], got["declared"], got["virtual"])
                        rows.append(row)
                        print("  ".join(row.cells()), flush=True)
                for name, proc in (
                    ("sim", procs.sim),
                    ("gateway", procs.gateway),
                    ("publisher", procs.publisher),
                ):
                    if proc.poll() is not None:
                        problems.append(f"latency {latency} ms: {name} exited with {proc.returncode}")
            finally:
                procs.stop()
            problems += [
                f"latency {latency} ms: publisher said: {e}" for e in publisher_errors(procs.publisher_log)
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds measured per path and cell (after warm-up)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="default: 1 16 64")
    parser.add_argument("--latencies", type=int, nargs="+", default=[0, 50], help="upstream latency, ms")
    parser.add_argument("--quick", action="store_true", help="1 s cells, concurrency 1 and 16")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument(
        "--json",
        default=str(RESULTS / "publish-latest.json"),
        help="write the results as JSON here (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = [1, 16] if args.quick else [1, 16, 64]
    if args.quick:
        args.duration = 1.0
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator shares core 1 with the sim and publisher
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print("  ".join(HEADER), flush=True)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    rows, problems = runner(measure(args))
    text = table(rows)
    print("\n" + text)
    for problem in problems:
        print(f"\nproblem: {problem}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    report = {
        "bench": "publish",
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "cores": os.cpu_count(),
        "command": " ".join(["python", "-m", "bench.publish", *sys.argv[1:]]),
        "duration_s": args.duration,
        "warmup_s": 0.5,
        "pinning": {"gateway": 0, "sim": 1, "publisher": 1, "loadgen": 1}
        if (os.cpu_count() or 1) > 1
        else None,
        "problems": problems,
        "rows": [r.as_dict() for r in rows],
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
