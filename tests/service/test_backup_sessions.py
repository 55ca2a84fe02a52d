"""Issue #10 finding 3: a backup session ends when its client is gone.

A real service and real ``certsrv backup`` subprocesses: SIGKILL in mid-read releases the session as soon as
the client's connection closes; a client that stays connected but stops (SIGSTOP) or never binds its
connection is ended by the short idle limit; ``certsrv backup --abort`` ends a live session at once and the
holder's next call fails with the spec's sequencing error (0x8000FFFF). Every state is re-read from the
service with ``certsrv backup --status --json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import support
from pycertsrv.home import Home
from support import Service, make_home

IDLE = 3.0  # [service] backup_idle_timeout of these tests (seconds)
WAIT = 60.0  # bound on every wait (never asserted as a duration)


FILLER = 40  # rows of 256 KiB: a 10 MiB database, read for ~10 s at RATE
RATE = "1M"  # the paced client reads a 1 MiB chunk about every second: well inside IDLE while it reads


def _big_database(home: Home) -> None:
    """Rows with large certificate blobs, written through the store (a database worth reading slowly)."""
    from pycertsrv.store import DISP_ISSUED, Store

    store = Store.open(home.root)
    try:
        for i in range(FILLER):
            with store.transaction() as tx:
                rid = tx.next_id("request")
                tx.put("request", {"request_id": rid, "disposition": DISP_ISSUED, "status_code": 0,
                                   "submitted_at": "2026-01-01T00:00:00+00:00", "requester": "filler",
                                   "serial": f"{0x10000 + i:08X}", "raw_cert": os.urandom(256 << 10),
                                   "subject": f"CN=filler{rid}"})
    finally:
        store.close()


@pytest.fixture
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = make_home(tmp_path_factory.mktemp("bs") / "H", "Session Test CA", backup_idle_timeout=IDLE)
    _big_database(home)
    pw(home).write_text("session test password\n")
    s = Service(home).start()
    yield s
    s.ensure_stopped()
    assert "Traceback" not in s.log() and " ERROR " not in s.log(), s.log()[-3000:]


def pw(home: Home) -> Path:
    """The backup sets' password file (every set is authenticated with it)."""
    return home.root.parent / "pw"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CERTSRV_SERVER", None)
    env.pop("CERTSRV_HOME", None)
    return env


def certsrv(home: Home | None, *args: str) -> subprocess.CompletedProcess[str]:
    return support.certsrv(*args, home=home.root if home is not None else None)


def status(home: Home) -> dict[str, Any] | None:
    """The running session, re-read from the service by the CLI (``backup --status --json``)."""
    r = certsrv(home, "backup", "--status", "--json")
    assert r.returncode == 0, r.stderr
    session: dict[str, Any] | None = json.loads(r.stdout)["session"]
    return session


def wait_for(what: str, cond: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def slow_backup(home: Home, target: Path) -> subprocess.Popen[str]:
    """A real `certsrv backup` that reads slowly (--max-rate), so it can be caught in mid-read."""
    return subprocess.Popen([sys.executable, "-m", "pycertsrv.cli", "backup", str(target), "--database-only",
                             "--password-file", str(pw(home)),
                             "--quiet", "--max-rate", RATE, "--home", str(home.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            stdin=subprocess.DEVNULL)


def reading(svc: Service) -> dict[str, Any] | None:
    """The session once it reads a file (polled in process: quick, so the slow reader is caught early)."""
    with svc.client() as c:
        st = c.backup_status()
    return st if st is not None and st["open_file"] is not None else None


def test_sigkill_in_mid_read_releases_the_session_when_the_connection_closes(svc: Service, tmp_path: Path) -> None:
    proc = slow_backup(svc.home, tmp_path / "killed")
    try:
        wait_for("the backup to be in mid-read", lambda: reading(svc))
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for("the session to end", lambda: status(svc.home) is None)
    # It ended because its connection closed, not by the idle limit.
    log = svc.log()
    assert "ended: the client's connection closed; pins and staging released" in log
    assert f"idle for more than {IDLE:g}s" not in log
    # The next backup succeeds and is whole.
    r = certsrv(svc.home, "backup", str(tmp_path / "next"), "--database-only", "--quiet",
                  "--password-file", str(pw(svc.home)))
    assert r.returncode == 0, r.stderr
    v = certsrv(None, "verify-backup", str(tmp_path / "next"), "--password-file", str(pw(svc.home)))
    assert v.returncode == 0 and v.stdout.startswith("OK: full backup"), v.stdout + v.stderr
    assert status(svc.home) is None
    assert "Traceback" not in svc.log()


def test_a_stopped_client_is_ended_by_the_short_idle_limit(svc: Service, tmp_path: Path) -> None:
    """SIGSTOP keeps the connection open: only the idle limit (2 s here, not the 600 s ceiling) frees it."""
    proc = slow_backup(svc.home, tmp_path / "stopped")
    try:
        wait_for("the backup to be in mid-read", lambda: reading(svc))
        proc.send_signal(signal.SIGSTOP)
        wait_for("the idle limit to end the session", lambda: status(svc.home) is None)
        assert f"ended: idle for more than {IDLE:g}s" in svc.log()
        r = certsrv(svc.home, "backup", str(tmp_path / "next"), "--database-only", "--quiet",
                  "--password-file", str(pw(svc.home)))
        assert r.returncode == 0, r.stderr
        # The stopped holder, resumed, learns its session is gone (spec §2.20: 0x8000FFFF), in one line.
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 1
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_session_without_a_connection_binding_expires_when_idle(svc: Service) -> None:
    """A plain HTTP client (no X-Backup-Hold) that opens a file and goes quiet is ended by the idle limit."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(svc.socket)), base_url="http://certsrv",
                      trust_env=False) as c:
        info = c.post("/backup/sessions", json={"grbit": 0, "flags": 1}).json()
        h = info["handle"]
        name = c.post(f"/backup/sessions/{h}/database-names").json()["names"][0][1:]
        # Not reading yet: the 600 s ceiling applies, so this re-read cannot race the short limit.
        st = status(svc.home)
        assert st is not None and st["held_by_connection"] is False and st["idle_limit"] == 600.0
        assert c.post(f"/backup/sessions/{h}/open", json={"name": name}).status_code == 200
        wait_for("the idle limit to end the session", lambda: status(svc.home) is None)
        r = c.post(f"/backup/sessions/{h}/close")
        body = r.json()
        assert r.status_code == 409 and body["hresult_hex"] == "0x8000FFFF"
        assert f"idle for more than {IDLE:g}s" in body["message"]


def test_abort_ends_a_live_session_at_once(svc: Service, tmp_path: Path) -> None:
    proc = slow_backup(svc.home, tmp_path / "aborted")
    try:
        wait_for("the backup to be in mid-read", lambda: reading(svc))
        # --status shows the holder, start, type and progress (re-read from the service by the CLI).
        before = status(svc.home)
        assert before is not None and before["principal"] == f"uid:{os.getuid()}" and before["kind"] == "full"
        assert before["started"] and before["phase"] == "DB" and before["held_by_connection"] is True
        assert before["open_file"] and before["open_file_size"] > 0 and before["files_listed"] >= 1
        assert before["bytes_sent"] > 0 and before["idle_limit"] == IDLE
        human = certsrv(svc.home, "backup", "--status")
        assert human.returncode == 0 and f"Full backup by {before['principal']}, started" in human.stdout
        r = certsrv(svc.home, "backup", "--abort")
        assert r.returncode == 0, r.stderr
        assert f"Aborted the backup session of {before['principal']}" in r.stdout
        assert status(svc.home) is None  # at once: re-read right after --abort returned
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The holder's next call fails with the spec's sequencing error, naming the abort, in one line.
    assert proc.returncode == 1
    assert "0x8000FFFF E_UNEXPECTED" in err and "aborted by uid:" in err and "run the backup again" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "aborted").exists() or not any((tmp_path / "aborted").iterdir())
    # Audited: who aborted whose session.
    from pycertsrv.service import audit

    recs = [x for x in audit.read(svc.home.root / "audit.log") if x["operation"] == "backup_abort"]
    assert recs and recs[-1]["outcome"] == "ok" and recs[-1]["details"]["holder"] == before["principal"]
    # Nothing to abort now: one line, the sequencing HRESULT, and what to do.
    again = certsrv(svc.home, "backup", "--abort")
    assert again.returncode == 1
    assert again.stderr.startswith("certsrv: BackupAbort: 0x8000FFFF E_UNEXPECTED: no backup session is in progress")
    # And the next backup runs.
    ok = certsrv(svc.home, "backup", str(tmp_path / "next"), "--database-only", "--quiet",
                  "--password-file", str(pw(svc.home)))
    assert ok.returncode == 0, ok.stderr


def test_status_without_a_session_and_bad_combinations(svc: Service, tmp_path: Path) -> None:
    r = certsrv(svc.home, "backup", "--status")
    assert r.returncode == 0 and r.stdout.strip() == "No backup session is running."
    both = certsrv(svc.home, "backup", "--status", "--abort")
    assert both.returncode == 1 and "0x80070057 E_INVALIDARG" in both.stderr and "exclude" in both.stderr
    extra = certsrv(svc.home, "backup", str(tmp_path / "x"), "--status")
    assert extra.returncode == 1 and "takes no DIRECTORY" in extra.stderr
    none = certsrv(svc.home, "backup")
    assert none.returncode == 1 and "no DIRECTORY given" in none.stderr
