"""A throwaway PostgreSQL server for the tests: Debian's server binaries (`apt-get install postgresql`,
which .ci/run does when they are missing), a data directory in a temp dir, TCP on a free loopback
port with password authentication, started in about a second and removed afterwards.

initdb and postgres refuse to run as root; as root (CI) they run as the `postgres` user the Debian
package creates."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "moe", "s3cret-pw"


@dataclass
class Server:
    port: int
    root: Path
    setup_s: float

    def url(self, database: str = "postgres", password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"


def server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start() -> Server:
    """Start a server; raises RuntimeError saying why it could not."""
    bin_dir = server_binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    start_time = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="moe-lab-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    os.chmod(root, 0o700)
    port = free_port()

    def run(cmd):
        return subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)

    done = run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    done = run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"])
    if done.returncode != 0:
        log = (root / "log").read_text()[-500:] if (root / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-300:]} {log}")
    return Server(port=port, root=root, setup_s=time.perf_counter() - start_time)


def stop(server: Server) -> None:
    bin_dir = server_binaries()
    subprocess.run(
        _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "immediate", "stop"]),
        capture_output=True,
        timeout=60,
    )
    shutil.rmtree(server.root, ignore_errors=True)


def create_database(server: Server, name: str) -> str:
    """A fresh database on the server; returns its URL."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=server.port, user=USER, password=PASSWORD, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)
