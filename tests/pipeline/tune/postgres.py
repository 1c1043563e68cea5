"""A throwaway PostgreSQL server for the tests: the system's ``initdb`` / ``pg_ctl`` (Debian's ``postgresql``
package, which ``.ci/run`` installs where it can), a data folder in a temporary directory, a free local port,
trust authentication, stopped and deleted afterwards. PostgreSQL refuses to run as root, so under root the
server runs as ``nobody``."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None where PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def missing() -> str | None:
    """Why a PostgreSQL test cannot run here (None when it can)."""
    if binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl); .ci/run installs Debian's postgresql package"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver (psycopg, in the test extra)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL (database ``postgres``, user ``bl``, no password)."""
    bin_dir = binaries()
    root = Path(tempfile.mkdtemp(prefix="bitladder-pg-"))
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        root.chmod(0o755)
        shutil.chown(root, user)
    data, port = root / "data", _free_port()
    run = dict(check=True, capture_output=True, text=True, user=user, cwd=root, timeout=120)
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "bl", "--auth=trust", "-E", "UTF8"], **run)
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                        f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off", "start"], **run)
        yield f"postgresql://bl@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, user=user, cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
