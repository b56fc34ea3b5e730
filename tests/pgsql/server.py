"""A real PostgreSQL server for tests and benchmarks: Debian's binaries, a cluster made with
initdb in a temporary directory, listening on a unix socket there only (no TCP), stopped after.

initdb refuses to run as root: then the cluster belongs to ``nobody`` (runuser). The server trusts
local connections, so a DSN names a user and the socket directory, no password.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "motte"


class PostgresDidNotStart(Exception):
    pass


def postgres_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextmanager
def postgres_server() -> Iterator[Path]:
    """Start a server; yields its socket directory."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresDidNotStart("PostgreSQL is not installed (Debian package postgresql)")
    owner = "nobody" if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="motte-pg-"))
    data, sockets = top / "data", top / "sock"
    sockets.mkdir()
    if owner:
        entry = pwd.getpwnam(owner)
        for path in (top, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(top, 0o755)
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                                  "--no-sync", "-E", "UTF8"], owner),
                       check=True, capture_output=True, env=env, cwd="/")
        options = f"-c listen_addresses='' -c unix_socket_directories='{sockets}' -c max_connections=200"
        started = subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(top / "server.log"),
                                            "-o", options, "-w", "-t", "60", "start"], owner),
                                 capture_output=True, env=env, cwd="/")
        if started.returncode != 0:
            log = (top / "server.log").read_text(errors="replace") if (top / "server.log").exists() else ""
            raise PostgresDidNotStart(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')} {log}")
        yield sockets
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                                     owner), capture_output=True, env=env, cwd="/")
        shutil.rmtree(top, ignore_errors=True)


def new_database(sockets: Path) -> str:
    """Make a new, empty database on the server at ``sockets``; returns its DSN."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    host = quote(str(sockets), safe="")
    with psycopg.connect(f"postgresql:///postgres?host={host}&user={SUPERUSER}", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return f"postgresql:///{name}?host={host}&user={SUPERUSER}"
