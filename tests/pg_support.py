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
from collections.abc import Callable, Iterator
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


# --- A primary + streaming standby pair (issue 14: "two PostgreSQL clusters on two ports with streaming
# replication"). The standby is a `pg_basebackup -R` copy of the primary; synchronous_standby_names is set on
# the primary only once the standby streams (set before, every commit would wait for a standby that is not
# there yet), and it is not in the copy, so a promoted standby does not wait for a partner it lacks.

STANDBY_NAME = "standby1"  # the walreceiver's application_name; synchronous_standby_names names it


@dataclass
class PgPair:
    """Two running clusters: ``primary`` and ``standby`` (streaming; ``sync`` is the primary's
    synchronous_commit when the standby is synchronous, None for asynchronous replication)."""

    primary: PgCluster
    standby: PgCluster
    base: Path
    sync: str | None

    def url(self, dbname: str = "postgres") -> str:
        """A multi-host libpq URI over both sockets, read-write sessions only: libpq tries the hosts in order
        and keeps the one that accepts writes (so after a promotion it lands on the promoted standby)."""
        from urllib.parse import quote

        hosts = ",".join(quote(c.host, safe="") for c in (self.primary, self.standby))
        ports = ",".join(str(c.port) for c in (self.primary, self.standby))
        return (f"postgresql://{self.primary.user}@/{dbname}?host={hosts}&port={ports}"
                "&target_session_attrs=read-write")

    def new_database(self, prefix: str = "ha") -> str:
        """CREATE DATABASE on the primary (replicated to the standby); returns the multi-host URL for it."""
        name = self.primary.new_database(prefix).split("?")[0].rsplit("/", 1)[1]
        return self.url(name)

    def replication(self) -> list[tuple[str, str, str]]:
        """The primary's pg_stat_replication: (application_name, state, sync_state) per walsender."""
        import psycopg

        with psycopg.connect(self.primary.url(), autocommit=True, connect_timeout=5) as c:
            rows = c.execute("SELECT application_name, state, sync_state FROM pg_stat_replication").fetchall()
        return [(str(a), str(s), str(y)) for a, s, y in rows]

    def close(self) -> None:
        """Stop both postmasters (fast) and remove the directories."""
        for c in (self.standby, self.primary):
            c.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_pair(base: Path, *, sync: str | None = "remote_apply") -> PgPair:
    """A primary under ``base/primary`` and its streaming standby under ``base/standby``, each on its own
    port. ``sync``: the primary's synchronous_commit ("on" = flushed on the standby, "remote_apply" = also
    visible there) with the standby in synchronous_standby_names; None = asynchronous replication."""
    import psycopg

    primary = start_cluster(base / "primary")
    try:
        ids = _as_postgres()
        sbase = base / "standby"
        sbase.mkdir()
        datadir = sbase / "data"
        if ids is not None:
            os.chown(sbase, *ids)
        # -R: standby.signal + primary_conninfo (with our application_name) in postgresql.auto.conf;
        # -X stream: the WAL needed to start comes along; --no-sync as initdb (throw-away clusters).
        subprocess.run([str(primary.bindir / "pg_basebackup"), "-D", str(datadir), "-R", "-X", "stream",
                        "--no-sync", "-c", "fast", "-U", primary.user,
                        "-d", f"host={primary.host} port={primary.port} application_name={STANDBY_NAME}"],
                       check=True, capture_output=True, preexec_fn=_demote(ids), cwd=str(sbase))
        port = _free_port()
        standby = PgCluster(primary.bindir, datadir, port, _spawn(primary.bindir, datadir, port), primary.user)
    except BaseException:
        primary.stop()
        raise
    pair = PgPair(primary, standby, base, sync)
    try:
        _wait_ready(standby)
        _wait_for("the standby to stream",
                  lambda: any(a == STANDBY_NAME and s == "streaming" for a, s, _ in pair.replication()))
        if sync is not None:
            with psycopg.connect(primary.url(), autocommit=True) as c:
                c.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                c.execute(f"ALTER SYSTEM SET synchronous_commit = '{sync}'")
                c.execute("SELECT pg_reload_conf()")
            _wait_for("the standby to become synchronous",
                      lambda: any(a == STANDBY_NAME and y == "sync" for a, _, y in pair.replication()))
    except BaseException:
        pair.close()
        raise
    return pair


@contextlib.contextmanager
def pair_context(*, sync: str | None = "remote_apply") -> Iterator[PgPair]:
    """A replication pair for the block; both clusters stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pgpair-"))
    os.chmod(base, 0o755)
    pair = start_pair(base, sync=sync)
    try:
        yield pair
    finally:
        pair.close()


def stop_immediate(cluster: PgCluster) -> None:
    """``pg_ctl stop -m immediate``: SIGQUIT to the postmaster (no shutdown checkpoint; what a crash
    leaves), and wait until it is gone."""
    cluster.stop(signal.SIGQUIT)


def promote(standby: PgCluster, timeout: int = 60) -> None:
    """Promote a standby (``pg_promote()``, waiting until it accepts writes)."""
    import psycopg

    with psycopg.connect(standby.url(), autocommit=True, connect_timeout=5) as c:
        row = c.execute("SELECT pg_promote(true, %s)", (timeout,)).fetchone()
        if not row or not row[0]:
            raise RuntimeError(f"pg_promote() did not finish within {timeout}s on port {standby.port}")
    _wait_for("the promoted standby to accept writes", lambda: not _in_recovery(standby))


def _in_recovery(cluster: PgCluster) -> bool:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True, connect_timeout=5) as c:
        row = c.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])
