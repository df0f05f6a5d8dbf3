"""Install the coding-agent CLIs the agent tests run (Claude Code, Codex CLI), pinned by
``package.json`` and ``package-lock.json`` next to this file, with ``npm ci`` into a cache.

Why a cache: the two packages carry native binaries (about 700 MB unpacked), too much to fetch on
every run. The install directory is named after a hash of the lockfile, so a version bump gets a
fresh directory and an old one is never half-reused; a marker file written after ``npm ci``
succeeds says the directory is complete, and a file lock keeps parallel runs (pytest-xdist,
two checkouts) from installing into it at once. Everything comes from the npm registry: both
packages ship their binaries as platform optional dependencies, nothing is downloaded at
postinstall (Claude Code's postinstall only copies its platform binary into place).

``make agents`` runs this module ahead of the tests (``python -m tests.agents.install``).
Cache location: ``$LANEWAY_AGENT_CACHE``, default ``~/.cache/laneway/agents``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "package.json"
LOCKFILE = HERE / "package-lock.json"
MARKER = ".laneway-installed"
NPM_TIMEOUT = 900.0


class InstallError(Exception):
    """npm is missing or ``npm ci`` failed; the message carries npm's own output."""


@dataclass(frozen=True)
class AgentCLIs:
    claude: Path
    codex: Path
    versions: dict[str, str]  # package name -> pinned version
    root: Path


def pinned_versions() -> dict[str, str]:
    """The one place the versions live: package.json (the lockfile pins the same, with hashes)."""
    deps: dict[str, str] = json.loads(MANIFEST.read_text())["dependencies"]
    return dict(deps)


def cache_dir() -> Path:
    configured = os.environ.get("LANEWAY_AGENT_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "laneway" / "agents"


def install_dir() -> Path:
    digest = hashlib.sha256(MANIFEST.read_bytes() + LOCKFILE.read_bytes()).hexdigest()[:16]
    return cache_dir() / f"npm-{digest}"


def _clis(root: Path) -> AgentCLIs:
    bin_dir = root / "node_modules" / ".bin"
    return AgentCLIs(bin_dir / "claude", bin_dir / "codex", pinned_versions(), root)


def ensure_installed() -> AgentCLIs:
    """The installed CLIs, running ``npm ci`` first unless a complete install is cached."""
    root = install_dir()
    if (root / MARKER).is_file():
        return _clis(root)
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not on PATH: the agent tests need Node.js and npm to install the CLIs")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / MARKER).is_file():  # another run may have finished while we waited
            _npm_ci(npm, root)
    return _clis(root)


def _npm_ci(npm: str, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)  # an install that never finished: start over
    root.mkdir(parents=True)
    shutil.copy2(MANIFEST, root / "package.json")
    shutil.copy2(LOCKFILE, root / "package-lock.json")
    argv = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=warn"]
    try:
        done = subprocess.run(
            argv, cwd=root, capture_output=True, text=True, timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise InstallError(
            f"{' '.join(argv)} took over {NPM_TIMEOUT:.0f} s in {root}:\n{exc.output}"
        ) from None
    if done.returncode != 0:
        raise InstallError(
            f"{' '.join(argv)} in {root} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    clis = _clis(root)
    missing = [str(p) for p in (clis.claude, clis.codex) if not p.exists()]
    if missing:
        raise InstallError(
            f"npm ci succeeded but installed no {', '.join(missing)}:\n{done.stdout}\n{done.stderr}"
        )
    (root / MARKER).write_text(json.dumps(clis.versions) + "\n")


def main() -> int:
    try:
        clis = ensure_installed()
    except InstallError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"agent CLIs in {clis.root}: " + ", ".join(f"{k}@{v}" for k, v in clis.versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
