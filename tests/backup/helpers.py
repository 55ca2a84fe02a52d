"""Shared helpers for the backup tests: a real store in a temp home, rows written through it."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from pycertsrv.backup.session import BackupManager
from pycertsrv.store import DISP_ISSUED, Store, hard_recover


def add_requests(store: Store, n: int, *, tag: str = "r") -> list[int]:
    """Write ``n`` request rows (each with two attribute rows) in one transaction each."""
    ids = []
    for _ in range(n):
        with store.transaction() as tx:
            rid = tx.next_id("request")
            serial = hashlib.sha256(f"{tag}-{rid}".encode()).hexdigest()[:32]
            tx.put("request", {"request_id": rid, "disposition": DISP_ISSUED, "status_code": 0,
                               "submitted_at": "2026-01-01T00:00:00+00:00", "requester": tag,
                               "serial": serial, "raw_cert": b"\x30" + rid.to_bytes(8, "big") * 16,
                               "subject": f"CN={tag}{rid}"})
            tx.put("attribute", {"request_id": rid, "name": "tag", "value": tag})
            tx.put("attribute", {"request_id": rid, "name": "serial", "value": serial})
        ids.append(rid)
    return ids


def read_all(mgr: BackupManager, h: str, name: str, dest: Path, chunk: int = 65536) -> int:
    """Open, read to the end into ``dest``, close; returns the size OpenFile reported."""
    size = mgr.open_file(h, name)
    with open(dest, "wb") as f:
        while True:
            data = mgr.read(h, chunk)
            if not data:
                break
            f.write(data)
    mgr.close_file(h)
    assert dest.stat().st_size == size
    return size


def full_backup(mgr: BackupManager, out: Path, *, principal: str = "op", truncate: bool = True,
                between: Any = None) -> dict[str, Any]:
    """A complete full backup into ``out``; returns names, gens and the end result."""
    out.mkdir(parents=True, exist_ok=True)
    h = mgr.prepare(principal, 0, 1)
    info = mgr.info(h)
    dbs = mgr.database_names(h)
    for e in dbs:
        read_all(mgr, h, e[1:], out / Path(e[1:]).name)
    if between is not None:
        between()
    logs = mgr.backup_logs(h)
    for e in logs:
        read_all(mgr, h, e[1:], out / Path(e[1:]).name)
    deleted = mgr.truncate_logs(h) if truncate else []
    res = mgr.end(h)
    return {"info": info, "dbs": dbs, "logs": logs, "deleted": deleted, "end": res}


def restore_copy(db_file: Path, log_dir: Path, scratch: Path, gen_low: int, gen_high: int) -> Path:
    """Hard-recover a copy of a backed-up database with its logs; returns the recovered file."""
    scratch.mkdir(parents=True, exist_ok=True)
    dest = scratch / db_file.name
    shutil.copyfile(db_file, dest)
    hard_recover(dest, log_dir, gen_low, gen_high)
    return dest


def wal_checkpoint(db: Path) -> tuple[int, int]:
    """A passive WAL checkpoint of ``db`` on a connection of its own, from this process: (frames in the WAL,
    frames copied to the file)."""
    conn = sqlite3.connect(db)
    try:
        _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    return int(frames), int(done)
