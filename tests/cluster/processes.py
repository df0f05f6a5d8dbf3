"""What the multi-replica tests share: real ``laneway serve`` replicas on a fresh PostgreSQL database
and a Redis prefix of their own, stopped at the end with their logs checked, and a plain chat call
that says only how it ended."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.test_replicas_processes import REDIS_URL, start_replicas
from tests.conftest import fresh_pg_database
from tests.e2e.test_publish import ADMIN, Processes, wait_for

MODEL = "gpt-4o-mini"


@dataclass
class Cluster:
    procs: Processes
    started: dict[str, subprocess.Popen[bytes]]
    urls: dict[str, str]


@contextlib.contextmanager
def replicas(
    tmp_path: Path, *names: str, redis_url: str = REDIS_URL, listening: bool = False, **config: Any
) -> Iterator[Cluster]:
    """Replicas ``names`` (each listing all of them) with ``config``'s sections; ``listening``:
    also wait until each hears the others' events. Stopped at the end; a replica killed on purpose
    may have no clean log, the others must be free of tracebacks."""
    procs = Processes(tmp_path)
    cluster = Cluster(procs, {}, {})
    with fresh_pg_database() as database_url:
        try:
            started, urls = start_replicas(
                procs,
                tmp_path,
                database_url,
                f"laneway-test-{uuid.uuid4().hex[:8]}:",
                *names,
                redis_url=redis_url,
                **config,
            )
            cluster.started.update(started)
            cluster.urls.update(urls)
            for name in urls if listening else ():
                wait_for(
                    lambda name=name: "listening for the other replicas' events" in procs.log(name), name
                )  # type: ignore[misc]
            yield cluster
        finally:
            procs.stop_all()
    for name, proc in cluster.started.items():
        if proc.returncode != -9:  # not one the test killed
            assert "Traceback" not in procs.log(name), procs.log(name)


def chat(url: str, timeout: float = 30, model: str = MODEL) -> int:
    """One chat request: its status, or -1 if the replica went away under it."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1
