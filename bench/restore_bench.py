"""Restore time of a large CA database: a full set of N issued certificates plus an incremental set of M
issuances, restored with ``plan_restore``/``run_restore`` and recovered by ``Store.open`` (hard recovery:
replay of the incremental's records onto the snapshot), against ``sqlite3 .restore`` of the same snapshot
in the same run (the floor: copying the database without replaying anything).

Full mode: N = 200,000, M = 20,000; quick mode: 20,000 + 2,000. The source database is built once by bulk
inserts through store transactions (100 issuances per transaction; each incremental issuance is its own
transaction, as the CA writes them) and cached under ``$TMPDIR/pycertsrv-bench-cache``.

Run alone: ``python -m bench.restore_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pycertsrv.backupset.chain import find_base
from pycertsrv.backupset.manifest import FileEntry, Manifest, write_manifest
from pycertsrv.backupset.restore_plan import plan_restore
from pycertsrv.backupset.restore_run import run_restore
from pycertsrv.fsutil import sha256_file
from pycertsrv.store import Store, StoreOptions, logfile

CACHE = Path(tempfile.gettempdir()) / "pycertsrv-bench-cache"
PASSWORD = b"bench password"  # every set is authenticated with a key derived from its password
BULK = 100
OPTS = StoreOptions(log_size=8 << 20, checkpoint_records=20000)


def _row(rid: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    seed = hashlib.sha256(rid.to_bytes(8, "big")).digest()
    now = datetime.now(UTC).isoformat()
    req = {"request_id": rid, "disposition": 20, "status_code": 0, "submitted_at": now, "resolved_at": now,
           "requester": "bench", "raw_request": seed * 9, "request_subject": f"CN=host{rid}.example.test",
           "template": "server", "serial": seed[:16].hex(), "raw_cert": seed * 16, "not_before": now,
           "not_after": "2030-01-01T00:00:00+00:00", "subject": f"CN=host{rid}.example.test",
           "thumbprint": hashlib.sha1(seed).hexdigest()}
    attr = {"request_id": rid, "name": "RequesterName", "value": "bench"}
    ext = {"request_id": rid, "oid": "2.5.29.17", "flags": 0, "value": seed[:24]}
    return req, attr, ext


def _put(store: Store, ids: range) -> None:
    with store.transaction() as tx:
        for rid in ids:
            req, attr, ext = _row(rid)
            tx.put("request", req)
            tx.put("attribute", attr)
            tx.put("extension", ext)


def _set_manifest(store: Store, d: Path, kind: str, low: int, high: int, snap_lsn: int | None,
                  db_rel: str | None) -> None:
    files = []
    for p in sorted((d / "DataBase").iterdir()):
        role = "database" if p.suffix == ".db" else "log"
        files.append(FileEntry(f"DataBase/{p.name}", p.stat().st_size, sha256_file(p), role))
    locs = [chr(0x44) + str(store.db_path), chr(0x82) + str(store.log_dir), chr(0x83) + str(store.system_dir)]
    base = None
    if kind == "incremental":
        (_, b), = find_base(d, store.identity, low, PASSWORD, None)
        base = {"set_id": b.set_id, "mac": b.mac, "kind": b.kind, "gen_high": b.gen_high}
    write_manifest(d, Manifest(kind=kind, ca_name=store.name, identity=store.identity,
                               created=datetime.now(UTC).isoformat(), gen_low=low, gen_high=high,
                               snapshot_lsn=snap_lsn, database=db_rel, locations=locs, files=files,
                               set_id=os.urandom(16).hex(), base=base), PASSWORD)


def build_sets(n_full: int, n_incr: int, cache: Path = CACHE) -> dict[str, Any]:
    """Build (or reuse) a full set of ``n_full`` issuances and an incremental of ``n_incr`` more."""
    root = cache / f"restore-auth-{n_full}-{n_incr}"  # sets from before authenticated manifests are not reused
    info_path = root / "info.json"
    if info_path.exists():
        info: dict[str, Any] = json.loads(info_path.read_text())
        return info
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    store = Store.create(root / "src", "Bench Restore CA", OPTS)
    try:
        for start in range(1, n_full + 1, BULK):
            _put(store, range(start, min(start + BULK, n_full + 1)))
        full = root / "full"
        (full / "DataBase").mkdir(parents=True)
        snap = store.snapshot(full / "DataBase" / store.db_path.name)
        high = store.roll_log()
        for g in range(snap.generation, high + 1):
            shutil.copyfile(store.log_dir / logfile.log_name(g), full / "DataBase" / logfile.log_name(g))
        _set_manifest(store, full, "full", snap.generation, high, snap.lsn, f"DataBase/{store.db_path.name}")
        # The incremental: one transaction per issuance, as the CA writes them (4 writers share fsyncs).
        ids = range(n_full + 1, n_full + n_incr + 1)
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda rid: _put(store, range(rid, rid + 1)), ids))
        incr = root / "incr"
        (incr / "DataBase").mkdir(parents=True)
        high2 = store.roll_log()
        for g in range(high + 1, high2 + 1):
            shutil.copyfile(store.log_dir / logfile.log_name(g), incr / "DataBase" / logfile.log_name(g))
        _set_manifest(store, incr, "incremental", high + 1, high2, None, None)
        rows = store.count("request")
    finally:
        store.close()
    shutil.rmtree(root / "src", ignore_errors=True)
    info = {"full": str(root / "full"), "incr": str(root / "incr"), "n_full": n_full, "n_incr": n_incr,
            "requests": rows, "build_seconds": round(time.monotonic() - t0, 1)}
    info_path.write_text(json.dumps(info))
    return info


def _sqlite_restore(snapshot: Path, work: Path) -> float:
    target = work / "sqlite-restore.db"
    target.unlink(missing_ok=True)
    t0 = time.monotonic()
    subprocess.run(["sqlite3", str(target), f".restore '{snapshot}'"], check=True, capture_output=True)
    with open(target, "rb") as f:
        os.fsync(f.fileno())  # our restore makes its copy durable; so must the floor
    return time.monotonic() - t0


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the restore of the full + incremental sets; returns the numbers."""
    n_full, n_incr = (20_000, 2_000) if quick else (200_000, 20_000)
    info = build_sets(n_full, n_incr)
    full, incr = Path(info["full"]), Path(info["incr"])
    snapshot = next((full / "DataBase").glob("*.db"))
    work = Path(tempfile.mkdtemp(prefix="rbench"))
    try:
        home = work / "home"
        t0 = time.monotonic()
        plan = plan_restore([incr, full], home=home, database_only=True, password=PASSWORD)
        t_plan = time.monotonic() - t0
        res = run_restore(plan)
        t_place = time.monotonic() - t0 - t_plan
        t1 = time.monotonic()
        st = Store.open(home, OPTS)
        t_recover = time.monotonic() - t1
        try:
            out = st.hard_recovery
            assert out is not None
            rep = out.report
            requests = st.count("request")
        finally:
            st.close()
        total = time.monotonic() - t0
        assert requests == n_full + n_incr, requests
        t_sqlite = _sqlite_restore(snapshot, work)
        return {
            "quick": quick, "certificates_full": n_full, "certificates_incremental": n_incr,
            "database_bytes": snapshot.stat().st_size, "bytes_placed": res.bytes,
            "restore_seconds": round(total, 3), "verify_plan_seconds": round(t_plan, 3),
            "place_seconds": round(t_place, 3), "recovery_seconds": round(t_recover, 3),
            "replayed_records": rep.replayed, "replay_seconds": round(rep.seconds, 3),
            "replay_records_per_s": round(rep.replayed / rep.seconds) if rep.seconds else None,
            "replay_rows_per_s": round(3 * rep.replayed / rep.seconds) if rep.seconds else None,
            "sqlite3_restore_seconds": round(t_sqlite, 3),
            "restore_vs_sqlite3": round(total / t_sqlite, 2) if t_sqlite else None,
            "build_seconds_cached": info.get("build_seconds"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
