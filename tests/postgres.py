"""A throw-away PostgreSQL (the Debian package) for the store tests and the fleet tests.

``initdb`` in a fresh temp dir, run by a non-root user (PostgreSQL refuses to run as root:
as root we use the ``postgres`` system user the package creates, or create one), listening
on its own free port on 127.0.0.1 and on a unix socket in that dir; stopped by its PID.
``fsync=off``: a crash of the test machine may lose this database, which is thrown away
anyway. Each test gets a database of its own (``new_database``).

    with start_postgres() as pg:
        url = pg.new_database()          # postgresql://webgateway@127.0.0.1:PORT/wg_3
        pg.stop(); pg.start()            # same data, same port: an outage

The session-wide fixture ``postgres_server`` (in ``tests/conftest.py``) starts one server for
the whole run; ``requires_postgres`` skips where the package is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc
from tests.support import free_port


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


BINDIR = _bindir()
requires_postgres = pytest.mark.skipif(
    BINDIR is None, reason="needs the postgresql Debian package (scripts/setup --test)")
ROLE = "webgateway"


def _run_as() -> str | None:
    """The user PostgreSQL runs as: ourselves, or (as root) the ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "postgres"], check=True, timeout=30)
    return "postgres"


class Postgres:
    def __init__(self, root: Path, user: str | None) -> None:
        assert BINDIR is not None
        self.root = root
        self.data = root / "data"
        self.user = user
        self.port = free_port()
        self.proc: Proc | None = None
        self._ids = itertools.count(1)
        self._cmd(BINDIR / "initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def _cmd(self, *args: str | Path) -> str:
        done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                              user=self.user, group=self.user,
                              extra_groups=[] if self.user else None, cwd=self.root)
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{db}"

    def socket_url(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.socket_dir}&port={self.port}&user={ROLE}"

    def start(self, seconds: float = 30) -> None:
        assert BINDIR is not None
        self.proc = Proc("postgres", [
            str(BINDIR / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200", "-c", "shared_buffers=32MB",
        ], self.root / "postgres.log", user=self.user, cwd=self.root)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.proc.check()
            ready = subprocess.run([str(BINDIR / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port)], timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"PostgreSQL did not start in {seconds} s:\n{self.proc.tail()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID: clients are disconnected at once."""
        if self.proc is not None:
            self.proc.stop(signal.SIGINT, wait=30)
            self.proc = None

    def sql(self, statement: str, db: str = "postgres") -> str:
        assert BINDIR is not None
        return self._cmd(BINDIR / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", db,
                         "-c", statement)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        db = f"wg_{next(self._ids)}"
        self.sql(f"CREATE DATABASE {db} STRATEGY FILE_COPY")
        return self.url(db)


@contextlib.contextmanager
def start_postgres() -> Iterator[Postgres]:
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="wg-postgres-"))
    if user is not None:
        shutil.chown(root, user, user)
    try:
        pg = Postgres(root, user)
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    if BINDIR is None:
        pytest.skip("needs the postgresql Debian package (scripts/setup --test)")
    with start_postgres() as pg:
        yield pg
