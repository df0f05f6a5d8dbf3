"""``laneway backends`` and ``laneway keys`` against a real SQLite database and a real config file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from laneway.cli import cli
from laneway.storage import hash_key

CONFIG = """\
storage:
  data_dir: {data_dir}
backends:
  gpu-1:
    provider: ollama
    base_url: http://127.0.0.1:11434
"""

Run = Callable[..., Result]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "laneway.yaml"
    path.write_text(CONFIG.format(data_dir=tmp_path / "data"), encoding="utf-8")
    return path


@pytest.fixture
def run(config_file: Path) -> Run:
    """``run("backends", "list")`` with ``--config`` pointing at the test's config file."""
    runner = CliRunner(env={"LANEWAY_CONFIG": None, "LANEWAY_DATABASE_URL": None})

    def invoke(*args: str, config: bool = True) -> Result:
        argv = [*args, "--config", str(config_file)] if config else list(args)
        return runner.invoke(cli, argv, catch_exceptions=False)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def refused(result: Result) -> str:
    """The one-line refusal of a command that failed the way a user may see it fail."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    return result.stderr


# --- backends -----------------------------------------------------------------------------------


def test_backends_add_list_remove(run: Run) -> None:
    out = ok(run("backends", "list")).stdout
    assert "gpu-1" in out
    assert "config" in out

    added = ok(
        run(
            "backends",
            "add",
            "oai",
            "--provider",
            "openai",
            "--base-url",
            "https://api.example.com/v1/",
            "--api-key-env",
            "EXAMPLE_KEY",
            "--model",
            "gpt-4o-mini",
            "--model",
            "text-embedding-3-small",
        )
    )
    assert "added backend 'oai'" in added.stdout

    table = ok(run("backends", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "PROVIDER", "BASE_URL", "TIER", "SOURCE"]
    assert table[1].split() == ["gpu-1", "ollama", "http://127.0.0.1:11434", "local", "config"]
    assert table[2].split() == ["oai", "openai", "https://api.example.com/v1", "cloud", "db"]

    rows = json.loads(ok(run("backends", "list", "--json")).stdout)
    oai = next(r for r in rows if r["name"] == "oai")
    assert oai["models"] == ["gpt-4o-mini", "text-embedding-3-small"]
    assert oai["api_key_env"] == "EXAMPLE_KEY"
    assert oai["source"] == "db"

    assert "removed backend 'oai'" in ok(run("backends", "remove", "oai")).stdout
    assert [r["name"] for r in json.loads(ok(run("backends", "list", "--json")).stdout)] == ["gpu-1"]


def test_add_and_remove_say_a_running_gateway_picks_the_change_up(run: Run) -> None:
    for command in ("add", "remove"):
        words = " ".join(ok(run("backends", command, "--help", config=False)).stdout.split())
        assert "when it starts" not in words
        assert (
            "within inventory.declared_reload seconds (10 by default), or at once on `laneway refresh`"
            in words
        )


def test_bad_base_url_names_the_option_without_a_traceback(run: Run) -> None:
    message = refused(run("backends", "add", "x", "--provider", "openai", "--base-url", "ftp://example.com"))
    assert "--base-url" in message
    assert "base_url" in message
    assert "http://" in message
    assert "x" not in [r["name"] for r in json.loads(ok(run("backends", "list", "--json")).stdout)]


def test_add_refuses_names_taken_in_config_or_database(run: Run, config_file: Path) -> None:
    message = refused(run("backends", "add", "gpu-1", "--provider", "ollama", "--base-url", "http://h:1"))
    assert "already declared in" in message
    assert str(config_file) in message

    ok(run("backends", "add", "gpu-2", "--provider", "ollama", "--base-url", "http://h:2"))
    message = refused(run("backends", "add", "gpu-2", "--provider", "ollama", "--base-url", "http://h:3"))
    assert "already exists" in message

    assert "not a valid backend name" in refused(
        run("backends", "add", "no/slash", "--provider", "ollama", "--base-url", "http://h:2")
    )


def test_remove_refuses_config_backends_and_unknown_names(run: Run, config_file: Path) -> None:
    message = refused(run("backends", "remove", "gpu-1"))
    assert f"is declared in {config_file}; edit the file to remove it" in message
    assert "gpu-1" in ok(run("backends", "list")).stdout

    assert "no backend named 'nope'" in refused(run("backends", "remove", "nope"))


def test_database_url_option_overrides_the_config(run: Run, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path}/other/state.db"
    ok(
        run(
            "backends",
            "add",
            "elsewhere",
            "--provider",
            "ollama",
            "--base-url",
            "http://h:1",
            "--database-url",
            other,
        )
    )
    assert "elsewhere" not in ok(run("backends", "list")).stdout
    assert "elsewhere" in ok(run("backends", "list", "--database-url", other)).stdout
    assert (tmp_path / "other" / "state.db").exists()


def test_an_unreachable_database_is_one_clear_line(run: Run) -> None:
    url = "postgresql://laneway:hunter2@127.0.0.1:1/laneway"
    message = refused(run("keys", "list", "--database-url", url))
    assert "postgresql://laneway:***@127.0.0.1:1/laneway" in message
    assert "hunter2" not in message
    assert "check that PostgreSQL is running" in message
    assert message.count("\n") == 1


# --- keys ---------------------------------------------------------------------------------------


def test_keys_create_list_revoke(run: Run, tmp_path: Path) -> None:
    created = ok(run("keys", "create", "ci", "--caller", "team-a"))
    secret = created.stdout.strip()
    assert secret.startswith("lw-")
    assert "cannot be shown again" in created.stderr
    assert "caller team-a" in created.stderr

    listed = ok(run("keys", "list")).stdout
    header, row = listed.splitlines()
    assert header.split() == ["ID", "NAME", "CALLER", "GRANTS", "PREFIX", "CREATED", "REVOKED"]
    key_id = row.split()[0]
    assert key_id.startswith("key_")
    assert row.split()[1:5] == ["ci", "team-a", "-", secret[:12] + "..."]
    assert secret not in listed

    # The database file holds the hash, never the secret.
    stored = (tmp_path / "data" / "laneway.db").read_bytes() + _wal(tmp_path / "data" / "laneway.db")
    assert secret.encode() not in stored
    assert hash_key(secret).encode() in stored

    ok(run("keys", "create", "bot"))
    assert "already exists" in refused(run("keys", "create", "bot"))

    assert "revoked" in ok(run("keys", "revoke", key_id)).stdout
    assert "no active key" in refused(run("keys", "revoke", key_id))
    assert "no active key" in refused(run("keys", "revoke", "nobody"))
    assert "revoked" in ok(run("keys", "revoke", "bot")).stdout  # by name

    assert ok(run("keys", "list")).stdout.startswith("no keys")
    everything = json.loads(ok(run("keys", "list", "--all", "--json")).stdout)
    assert [(k["name"], k["revoked_at"] is not None) for k in everything] == [("ci", True), ("bot", True)]
    assert all("secret" not in k and "key_hash" not in k for k in everything)


def _wal(db: Path) -> bytes:
    wal = db.with_name(db.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


@pytest.mark.parametrize("blocker", ["file", "directory"])
def test_a_sqlite_file_that_cannot_be_opened_is_named_by_its_absolute_path(
    tmp_path: Path, blocker: str
) -> None:
    """``sqlite:///var/...`` is relative to the working directory (four slashes: absolute): the
    message says which file it really is, in one line, with no thread's traceback after it."""
    import subprocess
    import sys

    from tests.cli.test_admin import ENV

    if blocker == "file":  # a file where the database's directory should be
        (tmp_path / "var").write_text("")
        url, path = "sqlite:///var/lib/laneway.db", tmp_path / "var" / "lib" / "laneway.db"
    else:  # a directory where the database file should be
        (tmp_path / "laneway.db").mkdir()
        url, path = "sqlite:///laneway.db", tmp_path / "laneway.db"
    for _ in range(3):  # the traceback came from a race, so once is not proof enough
        done = subprocess.run(
            [sys.executable, "-m", "laneway", "keys", "list", "--database-url", url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=ENV,
        )
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()
        assert (
            f"at {url} (the file {path}; a relative path: sqlite:////path/to.db for an absolute one)" in line
        )
