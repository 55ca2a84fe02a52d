"""A full backup of a live service while other clients keep issuing, restored with the store's replay."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycertsrv.backupset.manifest import read_manifest
from pycertsrv.backupset.verify import verify_backup
from pycertsrv.backupset.writer import run_backup
from pycertsrv.client import Client
from pycertsrv.errors import E_UNEXPECTED, ERROR_FILE_NOT_FOUND, CertSrvError
from pycertsrv.store import hard_recover
from support import Service, live_service, make_csr, short_home

from .helpers import wal_checkpoint


@pytest.fixture
def live() -> Iterator[Service]:
    svc = live_service(short_home())
    yield svc
    svc.cleanup()


class RollSpy:
    """Wraps a session: records which issuances had returned when GetBackupLogs (the roll) was called."""

    def __init__(self, inner: Any, completed: list[str], lock: threading.Lock) -> None:
        self.inner = inner
        self.completed = completed
        self.lock = lock
        self.before_roll: set[str] | None = None
        with lock:
            self.at_prepare = len(completed)
        self.kind, self.ca_name, self.identity = inner.kind, inner.ca_name, inner.identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def backup_logs(self) -> list[str]:
        # Let issuance go on between the snapshot (Prepare) and the roll, so the logs matter.
        with self.lock:
            target = self.at_prepare + 5
        for _ in range(2000):
            with self.lock:
                if len(self.completed) >= target:
                    break
            threading.Event().wait(0.005)
        with self.lock:
            self.before_roll = set(self.completed)
        result: list[str] = self.inner.backup_logs()
        return result

    def __enter__(self) -> RollSpy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


def _table(db: Path, sql: str) -> dict[Any, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[Any, list[tuple[Any, ...]]] = {}
        for row in conn.execute(sql):
            out.setdefault(row[0], []).append(tuple(row))
        return out
    finally:
        conn.close()


def test_full_backup_during_issuance_restores_every_returned_certificate(live: Service, tmp_path: Path) -> None:
    csrs = [make_csr(f"load{i}") for i in range(400)]
    completed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def issuer(k: int) -> None:
        try:
            with live.client() as c:
                started.wait()
                i = k
                while not stop.is_set() and i < len(csrs):
                    info = c.submit(csrs[i])
                    assert info["disposition"] == 20, info
                    with lock:
                        completed.append(info["serial"])
                    i += 3
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=issuer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    started.wait()
    while True:  # some issuance before the snapshot
        with lock:
            if len(completed) >= 15 or errors:
                break
        stop.wait(0.01)
    spy: list[RollSpy] = []

    def factory(kind: str) -> RollSpy:
        inner = client.backup(kind)
        # Many BackupRead answers per file, each ending inside a receive buffer (8192, set below).
        inner.read_ask = 20_000
        s = RollSpy(inner, completed, lock)
        spy.append(s)
        return s

    out = tmp_path / "set"
    with Client(live.address) as client:
        res = run_backup(factory, out, database_only=True, home=live.home, chunk=8192, password=b"pw")
    # keep issuing a little after the backup, then stop
    with lock:
        n_after_backup = len(completed)
    while True:
        with lock:
            if len(completed) >= n_after_backup + 5 or errors:
                break
        stop.wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    before_roll = spy[0].before_roll
    assert before_roll is not None and len(before_roll) >= 15
    assert res.manifest is not None and res.truncated  # a full backup truncates by default
    assert verify_backup(out, b"pw").ok
    live.stop()  # the live database is now final: compare against it

    m = read_manifest(out)
    assert m.database is not None
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    db = scratch / Path(m.database).name
    shutil.copyfile(out / m.database, db)
    in_snapshot = set(_table(db, "SELECT serial FROM request WHERE serial IS NOT NULL"))
    assert before_roll - in_snapshot, "no issuance happened between the snapshot and the roll"
    hard_recover(db, out / "DataBase", m.gen_low, m.gen_high, identity=m.identity)

    restored = _table(db, "SELECT serial, request_id FROM request WHERE serial IS NOT NULL")
    missing = before_roll - set(restored)
    assert not missing, f"{len(missing)} certificates returned before the roll are missing"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # No partial transaction: every restored request has exactly the attribute and extension rows
    # the live database has for it (issued requests are never changed later in this test).
    live_db = live.home.db_dir / db.name
    for table, key in (("request", "request_id"), ("attribute", "request_id"), ("extension", "request_id")):
        sql = f"SELECT * FROM {table} ORDER BY {key}" + (", name" if table == "attribute" else "") + (
            ", oid" if table == "extension" else "")
        got, want = _table(db, sql), _table(live_db, sql)
        assert got or table == "attribute", table  # the CA writes attributes only when a request carries some
        for rid, rows_ in got.items():
            assert want.get(rid) == rows_, f"{table} rows of request {rid} differ"
    # every restored certificate has its extension rows (written in the same transaction)
    rids = {r[0][1] for r in restored.values()}
    assert rids <= set(_table(db, "SELECT request_id FROM extension"))
    # the restored certificates verify against the CA certificate (openssl)
    ca_pem = live.home.root / "publish" / "ca.crt"
    conn = sqlite3.connect(db)
    ders = [r[0] for r in conn.execute("SELECT raw_cert FROM request WHERE raw_cert IS NOT NULL LIMIT 3")]
    conn.close()
    for i, der in enumerate(ders):
        cert = tmp_path / f"c{i}.der"
        cert.write_bytes(der)
        pem = tmp_path / f"c{i}.pem"
        subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(pem)], check=True)
        r = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(pem)], capture_output=True, text=True)
        assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr


def test_idle_session_expires_and_with_block_always_ends(tmp_path: Path) -> None:
    def short_timeout(cfg: Any) -> None:
        cfg.service.backup_session_timeout = 0.5

    svc = live_service(short_home("cbexp"), configure=short_timeout)
    try:
        with svc.client() as c:
            # `with client.backup(kind)` ends the session even when the body fails
            with pytest.raises(ZeroDivisionError):
                with c.backup("full") as s:
                    s.database_names()
                    # the session's calls on its own connection bring the service's errors back unchanged
                    with pytest.raises(CertSrvError) as e:
                        s.open_file("/etc/passwd")
                    assert e.value.hresult == ERROR_FILE_NOT_FOUND and "/etc/passwd" in e.value.message
                    1 / 0  # noqa: B018
            assert c.call("GET", "/backup/status")["session"] is None
            # a client that vanishes: the service ends the session after the idle timeout
            s = c.backup("full")
            s.open_file(s.database_names()[0][1:])
            assert s.read(100)[:16] == b"SQLite format 3\x00"  # the database is held open mid-read
            assert c.call("GET", "/backup/status")["session"] is not None
            db = next(svc.home.db_dir.glob("*.db"))
            c.submit(make_csr("during"))
            frames, done = wal_checkpoint(db)
            assert frames > done  # pinned: nothing may be copied into the database file
            staging = svc.home.staging_dir
            for _ in range(600):  # the service's housekeeping runs every few seconds
                if c.call("GET", "/backup/status")["session"] is None:
                    break
                threading.Event().wait(0.05)
            assert c.call("GET", "/backup/status")["session"] is None
            assert not staging.exists() or not any(staging.iterdir())  # no snapshot copy is left behind
            # the pin went with it: the service's WAL can be checkpointed completely again
            c.submit(make_csr("after-expiry"))
            for _ in range(200):  # a service read in flight can hold one attempt back
                frames, done = wal_checkpoint(db)
                if frames == done:
                    break
                threading.Event().wait(0.02)
            assert frames == done
            with pytest.raises(CertSrvError) as e:
                s.read(10)
            assert e.value.hresult == E_UNEXPECTED
            with c.backup("full"):  # the lock was released
                pass
    finally:
        svc.cleanup()
