"""A PostgreSQL server of a test's own, for tests that stop and restart it (the machine's server at
5432 is never touched): ``initdb`` into a fresh directory, ``pg_ctl`` on a free port on loopback,
run as the ``postgres`` OS user (PostgreSQL refuses to run as root, and the tests run as root).

    with own_postgres() as pg:                  # or the ``own_pg`` fixture
        url = pg.create_database("laneway")     # postgresql://postgres@127.0.0.1:PORT/laneway
        ...
        pg.stop()                               # connections cut, the port closed
        pg.start()                              # the same data back

Trust authentication on 127.0.0.1 only, fsync off (a test's data need not survive a power cut),
and the socket in the data directory's parent, so nothing is shared with any other server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_inventory import free_port

USER = "postgres"  # the OS user the server runs as, and its superuser role


def _as_postgres(*command: str, timeout: float = 120) -> None:
    done = subprocess.run(
        ["runuser", "-u", USER, "--", *command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")


class OwnPostgres:
    """One PostgreSQL cluster in ``root`` (a directory the ``postgres`` user owns), on ``port``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.running = False
        _as_postgres("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        log = str(self.root / "postgres.log")
        _as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are cut and the server shuts down cleanly; ``immediate``: as a crash."""
        _as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def create_database(self, name: str) -> str:
        """A new database; its URL."""

        async def create() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A running PostgreSQL of the caller's own, stopped and deleted when the block ends."""
    assert shutil.which("initdb"), "PostgreSQL's binaries are on PATH (initdb, pg_ctl)"
    root = Path(tempfile.mkdtemp(prefix="laneway-pg-"))  # under /tmp: the postgres user can reach it
    shutil.chown(root, USER, USER)
    try:
        pg = OwnPostgres(root, free_port())
        pg.start()
        try:
            yield pg
        finally:
            if pg.running:
                pg.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """``own_postgres()`` as a fixture: import it into a test module to use it."""
    with own_postgres() as pg:
        yield pg
