"""A real, throw-away PostgreSQL cluster for tests (issue 12: "the real server, in tests and CI").

``initdb --no-sync`` runs as the ``postgres`` user (initdb refuses root) into a temp dir, then ``postgres``
is started as a DIRECT child of this process with its uid set in the child, so the pid we hold is the
postmaster itself (PID 1 here reaps no orphans; a daemonised postmaster would be left a zombie). The
Unix socket lives in the cluster directory; no TCP listener. The cluster is session-scoped; each test
gets a fresh database (``CREATE DATABASE``: about 10 ms).

Under ``CI=true`` a missing server binary is a FAILURE, never a skip (the project's rules).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD_ROLE = "certsrv_pw"  # the role that must give PASSWORD (all others: trust)
PASSWORD = "right-password"
PG_BINDIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def pg_bindir() -> Path | None:
    """Where ``postgres``/``initdb`` live: Debian's versioned dir, else ``pg_config --bindir``, else PATH."""
    for d in PG_BINDIRS:
        if Path(d, "postgres").is_file() and Path(d, "initdb").is_file():
            return Path(d)
    cfg = shutil.which("pg_config")
    if cfg:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            d = subprocess.run([cfg, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
            if Path(d, "postgres").is_file():
                return Path(d)
    found = shutil.which("postgres")
    return Path(found).parent if found and Path(found).with_name("initdb").exists() else None


def require_postgres() -> Path:
    """The binary directory, or skip (only outside CI) / fail (under CI=true) naming what is missing."""
    d = pg_bindir()
    if d is not None:
        return d
    msg = "PostgreSQL server binaries (postgres, initdb) not found: install Debian's `postgresql` package"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (CI=true: tests that need PostgreSQL never skip)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running throw-away cluster."""

    bindir: Path
    datadir: Path
    port: int
    proc: subprocess.Popen[bytes]
    user: str
    _n = itertools.count(1)

    @property
    def host(self) -> str:
        """The socket directory (libpq takes a directory as the host)."""
        return str(self.datadir)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URI for ``dbname`` over the Unix socket."""
        from urllib.parse import quote

        return f"postgresql://{self.user}@/{dbname}?host={quote(self.host, safe='')}&port={self.port}"

    def new_database(self, prefix: str = "t") -> str:
        """CREATE DATABASE with a fresh name; returns its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._n)}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """DROP DATABASE ... WITH (FORCE): closes whatever a failed test left connected."""
        import psycopg

        name = url.split("?")[0].rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def tool(self, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run a client tool of the same installation (pg_dump, psql) against this cluster."""
        return subprocess.run([str(self.bindir / name), "-h", self.host, "-p", str(self.port), "-U", self.user,
                               *args], capture_output=True, check=True)

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """Stop the postmaster (SIGINT = fast shutdown; SIGQUIT = immediate) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(mode)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        """(Re)start the postmaster on the same data dir and port."""
        self.proc = _spawn(self.bindir, self.datadir, self.port)
        _wait_ready(self)


def _as_postgres() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None  # not root: initdb runs as ourselves
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _demote(ids: tuple[int, int] | None):  # type: ignore[no-untyped-def]
    def run() -> None:
        if ids is not None:
            os.setgid(ids[1])
            os.setgroups([])
            os.setuid(ids[0])
    return run


def _spawn(bindir: Path, datadir: Path, port: int) -> subprocess.Popen[bytes]:
    ids = _as_postgres()
    log = open(datadir.parent / "postgres.log", "ab")  # noqa: SIM115 (the child keeps it)
    try:
        return subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(datadir), "-k", str(datadir), "-p", str(port),
             "-c", "listen_addresses=", "-c", "fsync=on", "-c", "max_connections=60"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_demote(ids), cwd=str(datadir))
    finally:
        log.close()


def _wait_ready(cluster: PgCluster) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        if cluster.proc.poll() is not None:
            raise RuntimeError("postgres exited at start: "
                               + (cluster.datadir.parent / "postgres.log").read_text(errors="replace")[-2000:])
        try:
            with psycopg.connect(cluster.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_cluster(base: Path) -> PgCluster:
    """initdb + start a cluster under ``base`` (a fresh directory)."""
    bindir = require_postgres()
    ids = _as_postgres()
    datadir = base / "data"
    datadir.mkdir(parents=True)
    if ids is not None:
        os.chown(base, *ids)
        os.chown(datadir, *ids)
    user = "postgres" if ids is not None else pwd.getpwuid(os.getuid()).pw_name
    subprocess.run([str(bindir / "initdb"), "--no-sync", "-A", "trust", "-U", user, "-E", "UTF8",
                    "--locale=C", "-D", str(datadir)], check=True, capture_output=True,
                   preexec_fn=_demote(ids), cwd=str(datadir))
    # One role logs in with a password (scram), for the wrong-password tests; everyone else is trusted.
    hba = datadir / "pg_hba.conf"
    hba.write_text(f"local all {PASSWORD_ROLE} scram-sha-256\n" + hba.read_text())
    port = _free_port()
    cluster = PgCluster(bindir, datadir, port, _spawn(bindir, datadir, port), user)
    try:
        _wait_ready(cluster)
        import psycopg

        with psycopg.connect(cluster.url(), autocommit=True) as c:
            c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def cluster_context() -> Iterator[PgCluster]:
    """A cluster for the block; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pgtest-"))
    os.chmod(base, 0o755)
    cluster = start_cluster(base)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


_SHARED: PgCluster | None = None


def shared_cluster() -> PgCluster:
    """The process's one throw-away cluster, started on first use and stopped at exit (the session fixture
    and the engine conformance suite's PostgreSQL entry share it)."""
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        import atexit

        base = Path(tempfile.mkdtemp(prefix="pgtest-"))
        os.chmod(base, 0o755)
        cluster = start_cluster(base)

        def stop() -> None:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)

        atexit.register(stop)
        _SHARED = cluster
    return _SHARED
