"""Test helpers for the restore tests: a source CA database, backup sets written by the real writer, row
comparison.

Sets are written by ``run_backup`` (the production writer) over an in-process ``LocalSession`` of a
``BackupManager`` on the source store, so restore tests do not depend on the service: the writer streams the
snapshot and the generations, writes and authenticates certbkxp.dat last (SET_PASSWORD), and chains an
incremental to the set beside it. Logs are kept (``keep_log``): a later incremental needs them. A test that
needs a broken set damages a set written here.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import support
from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home
from pycertsrv.spec import FULL, INCREMENTAL
from pycertsrv.store import Store, StoreOptions, archivemark
from pycertsrv.store.registration import SETTING_LAST_RECOVERY, SETTING_REQUIRES_FULL
from pycertsrv.store.schema import TABLES

OPTS = StoreOptions(log_size=64 << 10, checkpoint_records=50)
# Written by every restore's recovery by design: its time, "next backup full", and a new archive lineage (issue 13).
IGNORED_SETTINGS = {SETTING_LAST_RECOVERY, SETTING_REQUIRES_FULL, archivemark.SETTING_LINEAGE,
                    archivemark.SETTING_LINEAGE_START}
SET_PASSWORD = b"restore-setlib password"  # every set is authenticated with a key derived from it


def make_source(home: Path, name: str = "Test CA") -> Store:
    """A fresh store in ``home``."""
    return Store.create(home, name, OPTS)


def add_requests(store: Store, n: int, *, tag: str = "r") -> list[int]:
    """Insert ``n`` issued-looking request rows (one transaction each) with an attribute and extension."""
    ids = []
    for _ in range(n):
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {
                "request_id": rid, "disposition": 20, "status_code": 0, "submitted_at": datetime.now(UTC).isoformat(),
                "requester": tag, "raw_request": os.urandom(64), "serial": f"{rid:032x}", "raw_cert": os.urandom(200),
                "subject": f"CN={tag}-{rid}", "not_after": "2035-01-01T00:00:00+00:00",
            })
            tx.put("attribute", {"request_id": rid, "name": "tag", "value": tag})
            tx.put("extension", {"request_id": rid, "oid": "2.5.29.17", "flags": 0, "value": os.urandom(16)})
        ids.append(rid)
    return ids


def revoke(store: Store, rid: int) -> None:
    """Change an existing row (so replay must apply updates, not only inserts)."""
    row = store.get("request", rid)
    assert row is not None
    row.update(disposition=21, revoked_at=datetime.now(UTC).isoformat(), revocation_reason=1)
    with store.transaction() as tx:
        tx.put("request", row)


def rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows, ordered by key, settings written by a restore left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, t in TABLES.items():
        rs = store.select(name, order_by=list(t.key))
        if name == "setting":
            rs = [r for r in rs if r["name"] not in IGNORED_SETTINGS]
        out[name] = rs
    return out


def _write_set(store: Store, d: Path, kind: str,
               after: int | None = None) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write a set with the real writer; returns (gen_high, the source's rows when the session began)."""
    moment = rows(store)
    mgr = BackupManager(store, Home.at(store.home), 600.0)
    try:
        res = run_backup(lambda k: LocalSession(mgr, k), d, kind=kind, password=SET_PASSWORD, database_only=True,
                         keep_log=True)
    finally:
        mgr.close()
    assert res.manifest is not None
    if after is not None:  # the writer continues the chain from the set beside it: the caller's expectation holds
        assert res.manifest.gen_low == after + 1, (res.manifest.gen_low, after)
    return res.manifest.gen_high, moment


def full_set(store: Store, d: Path) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write a full set to ``d``; returns (gen_high, the source's rows at the moment of the backup)."""
    return _write_set(store, d, FULL)


def incremental_set(store: Store, d: Path, after: int) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write an incremental set with the generations after ``after`` (the last set's gen_high); returns
    (gen_high, rows at the backup)."""
    return _write_set(store, d, INCREMENTAL, after)


def manifest(d: Path) -> dict[str, Any]:
    """A set's certbkxp.dat."""
    data: dict[str, Any] = json.loads((d / "DataBase" / "certbkxp.dat").read_bytes())
    return data


def tick() -> None:
    """Let the clock move on so record times differ (the --until tests need distinct instants)."""
    time.sleep(0.002)


def _ca_only(r: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Leave out what is not the CA's: backup bookkeeping written at End, and settings a restore writes."""
    r.pop("backup_history")
    r["setting"] = [x for x in r["setting"]
                    if x["name"] not in IGNORED_SETTINGS and not x["name"].startswith("DBLast")]
    return r


def ca_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The rows a restore must bring back (backup bookkeeping rows written at End are left out)."""
    return _ca_only(rows(store))


def db_rows_readonly(home: Path) -> dict[str, list[dict[str, Any]]]:
    """:func:`ca_rows` of a running CA's database, read through a read-only SQLite connection."""
    return _ca_only(support.db_rows_readonly(home))


def opened_state(home: Path, want: dict[str, Any]) -> str:
    """'ok' when the CA opens with exactly the wanted rows, 'refused' on a clear CertSrvError; else fail."""
    try:
        a = Authority.open(home)
    except CertSrvError as e:
        assert e.hresult and e.message  # a clear refusal
        return "refused"
    try:
        assert ca_rows(a.store) == want, "a CA started with partial data"
        return "ok"
    finally:
        a.close()


def full_and_incremental(a: Authority, work: Path, password: bytes | str, n_full: int, n_incr: int
                         ) -> dict[str, list[dict[str, Any]]]:
    """With the real writer over an in-process session: issue ``n_full``, write ``work/full`` (with the key); issue
    ``n_incr`` more, write ``work/i1`` (database only). Returns the rows a restore of both must bring back."""
    with support.backup_manager(a, 60) as m:
        support.issue(a, n_full)
        run_backup(lambda k: LocalSession(m, k), work / "full", password=password, home=a.home, keep_log=True)
        support.issue(a, n_incr, "i")
        want = ca_rows(a.store)
        run_backup(lambda k: LocalSession(m, k), work / "i1", kind=INCREMENTAL, database_only=True,
                   password=password)
    return want
