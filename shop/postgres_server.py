"""A private PostgreSQL server on a port of its own, for the chaos run: unlike a shared server it can be killed -9 and
restarted (crash recovery from its WAL) at will.

The server binaries come from the machine's PostgreSQL installation (`pg_config --bindir`, or Debian's
/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root, so when this process is root the server runs as
the `postgres` system user, in a data directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from shop.embedded_redis import free_port


def postgres_bindir() -> Path | None:
    if pg_config := shutil.which("pg_config"):
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (found / "initdb").exists():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            # The server's user must reach its directory; a test's tmp path (mode 700, root's) is out of its reach.
            directory = Path(tempfile.mkdtemp(prefix="shop-postgres-"))
            shutil.chown(directory, self.user, self.user)
        self.bindir, self.directory = bindir, Path(directory).resolve()
        self.data = self.directory / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            made = subprocess.run(self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                            "--auth=trust", "--no-sync", "-E", "UTF8"), capture_output=True, text=True)
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed: {made.stderr.strip()[-500:]}")
        self.process = subprocess.Popen(
            self._run(str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                      "-k", str(self.directory), "-c", "fsync=on", "-c", "max_connections=200"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        engine = create_engine(self.url().replace("postgresql://", "postgresql+psycopg://", 1))
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    with engine.connect() as connection:
                        connection.execute(text("SELECT 1"))
                    return self
                except OperationalError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"postgres on port {self.port} did not start") from None
                    time.sleep(0.1)
        finally:
            engine.dispose()

    def postmaster_pid(self) -> int | None:
        """The server's own pid (with `runuser` in between, not the pid of the process started here)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """kill -9 of the postmaster: its backends exit, and the next start recovers from the WAL."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
        if self.process:
            self.process.wait()
        time.sleep(0.5)  # backends notice the postmaster is gone and exit

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        pid = self.postmaster_pid()
        if pid is None or not Path(f"/proc/{pid}").exists():
            return
        os.kill(pid, 2)  # SIGINT: a "fast" shutdown
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                self.kill()
                return
            time.sleep(0.05)
        if self.process:
            self.process.wait(5)
        if self.user:
            shutil.rmtree(self.directory, ignore_errors=True)
