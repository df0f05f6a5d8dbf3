"""What cluster mode costs: one replica in cluster mode (PostgreSQL and Redis) against the same
replica embedded (SQLite, in-process state), side by side in one run, in front of the same kind of
simulated upstream, measured in alternating rounds so that the machine's drift hits both alike.

    make bench                              # runs this after bench.overhead
    python -m bench.cluster --rounds 3      # more rounds, 3 s cells

Cluster mode adds a Redis round trip only where sharing needs one: while nobody waits for a pool,
a replica serves from the spare leases it keeps (no round trip); when requests queue (the
contended cells: fewer slots than concurrent requests), each slot is taken from and given back to
the cluster's queue in Redis. The targets (issue 14):
at concurrency 1 at most 0.3 ms more p50 than embedded; at concurrency 64 at least 80% of its
throughput. Both gateways run pinned to core 0, one measured at a time; the upstream and the load
generator share core 1; Redis and PostgreSQL are this machine's (a fresh database and key prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import Result, run
from bench.overhead import KEY, Procs, body, markdown_table, start

REDIS_URL = os.environ.get("LANEWAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("LANEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def admin_sql(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Cell:
    latency_ms: int
    stream: bool
    concurrency: int
    slots: int | None = None  # the backend's, when the cell sets them (fewer than the concurrency)
    embedded: list[Result] = field(default_factory=list)
    cluster: list[Result] = field(default_factory=list)

    @staticmethod
    def median(results: list[Result], attr: str) -> float:
        """The median over the rounds: one round disturbed by the machine does not move it."""
        return statistics.median(getattr(r, attr) for r in results)

    def cells(self) -> list[str]:
        e_rps, c_rps = self.median(self.embedded, "rps"), self.median(self.cluster, "rps")
        e_p50, c_p50 = self.median(self.embedded, "p50_ms"), self.median(self.cluster, "p50_ms")
        errors = sum(r.errors for r in self.embedded), sum(r.errors for r in self.cluster)
        return [
            f"{self.latency_ms}",
            "yes" if self.stream else "no",
            f"{self.concurrency}",
            "64" if self.slots is None else f"{self.slots}",
            f"{e_rps:,.0f}",
            f"{c_rps:,.0f}",
            f"{c_rps / e_rps:.2f}" if e_rps else "nan",
            f"{e_p50:.2f}",
            f"{c_p50:.2f}",
            f"{c_p50 - e_p50:+.2f}",
            f"{len(self.embedded)}",
            f"{errors[0]}/{errors[1]}",
        ]


HEADER = [
    "upstream ms",
    "stream",
    "conc",
    "slots",
    "embedded rps",
    "cluster rps",
    "ratio",
    "embedded p50",
    "cluster p50",
    "added p50",
    "rounds",
    "errors e/c",
]


async def measure(args: argparse.Namespace) -> list[Cell]:
    """The uncontended cells (the backend's 64 slots, more than any concurrency here: a replica
    serves from its spare leases), then the contended ones (``--contended-slots`` fewer than the
    concurrency: requests queue, and every slot goes through the cluster's queue in Redis)."""
    workdir = Path(tempfile.mkdtemp(prefix="laneway-bench-cluster-"))
    database = f"laneway_bench_{uuid.uuid4().hex[:10]}"
    await admin_sql(f'CREATE DATABASE "{database}"')
    cells: list[Cell] = []
    try:
        for latency in args.latencies:
            plans = [(None, args.concurrency)]
            if args.contended_slots:
                plans.append((args.contended_slots, [args.contended_concurrency]))
            for slots, concurrencies in plans:
                cells += await measure_pair(args, workdir, database, latency, slots, concurrencies)
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
    return cells


async def measure_pair(
    args: argparse.Namespace,
    workdir: Path,
    database: str,
    latency: int,
    slots: int | None,
    concurrencies: list[int],
) -> list[Cell]:
    """An embedded gateway and one in cluster mode, each in front of an upstream of its own, the
    cells measured in alternating rounds."""
    backend: dict[str, object] = {} if slots is None else {"slots": slots, "queue_timeout": 60}
    cells: list[Cell] = []
    embedded = start(latency / 1000, workdir, backend)
    cluster: Procs | None = None
    try:
        cluster = start(
            latency / 1000,
            workdir,
            backend,
            storage={"database_url": f"{PG_ADMIN.rsplit('/', 1)[0]}/{database}", "runtime_url": REDIS_URL},
            cluster={"namespace": f"laneway-bench-{uuid.uuid4().hex[:8]}:"},
        )
        for stream in (False, True):
            for conc in concurrencies:
                cell = Cell(latency, stream, conc, slots)
                for _ in range(args.rounds):
                    for procs, results in ((embedded, cell.embedded), (cluster, cell.cluster)):
                        results.append(
                            await run(
                                "127.0.0.1",
                                procs.gw_port,
                                "/v1/chat/completions",
                                body(stream),
                                headers={"authorization": f"Bearer {KEY}"},
                                concurrency=conc,
                                duration=args.duration,
                            )
                        )
                cells.append(cell)
                print("  ".join(cell.cells()), flush=True)
    finally:
        embedded.stop()
        if cluster is not None:
            cluster.stop()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (median shown)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--latencies", type=int, nargs="+", default=[0], help="upstream latency, ms")
    parser.add_argument("--contended-slots", type=int, default=8, help="the contended cells' slots (0: none)")
    parser.add_argument("--contended-concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1 s cells, one round")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print("  ".join(HEADER), flush=True)
    try:
        cells = runner(measure(args))
    except OSError as exc:
        sys.exit(
            f"bench.cluster needs PostgreSQL ({PG_ADMIN}) and Redis ({REDIS_URL}); "
            f"set LANEWAY_BENCH_PG / LANEWAY_BENCH_REDIS to reach them: {exc}"
        )
    text = markdown_table(HEADER, [c.cells() for c in cells])
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
