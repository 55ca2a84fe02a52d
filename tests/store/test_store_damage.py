"""Issue 10 finding 4: a damaged log record.

- Already applied and below the checkpoint (clean shutdown): the store opens and serves, reports the
  damage loudly (log warning, health), and the next backup must be full; a full backup clears that
  and restores past the damage.
- Needed by recovery (above what the database holds): opening still refuses, and the message says
  which backup set to restore and the command to run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import commit_request, patch_file, record_offsets

from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.verify import verify_backup
from pycertsrv.backupset.writer import run_backup
from pycertsrv.errors import JET_ERR_LOG_FILE_CORRUPT, JET_ERR_MISSING_FULL_BACKUP, Conflict, CorruptData
from pycertsrv.home import Home
from pycertsrv.store import Store, StoreOptions, hard_recover, list_generations, logfile, read_checkpoint

OPTS = StoreOptions(log_size=1 << 20, checkpoint_records=0)


def backup(mgr: BackupManager, out: Path, incremental: bool = False) -> dict[str, object]:
    """A complete backup through the session API (as the service runs it) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    h = mgr.prepare("op", 1 if incremental else 0, 0 if incremental else 1)
    for listing in ([] if incremental else [mgr.database_names]) + [mgr.backup_logs]:  # spec §2.20 order
        for entry in listing(h):
            src = Path(entry[1:])
            mgr.open_file(h, str(src))
            with open(out / src.name, "wb") as f:
                while data := mgr.read(h, 1 << 16):
                    f.write(data)
            mgr.close_file(h)
    return mgr.end(h)


def request_ids(store: Store) -> list[int]:
    return sorted(r["request_id"] for r in store.select("request"))


def test_damage_below_the_checkpoint_opens_and_requires_a_full_backup(
        tmp_home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.create(tmp_home, "t", OPTS)
    mgr = BackupManager(store, Home.at(tmp_home), 600.0)
    for rid in range(1, 4):
        commit_request(store, rid)
    assert backup(mgr, tmp_path / "full1")["recorded"]  # rolls: generation 2 is now written
    for rid in range(4, 12):
        commit_request(store, rid)
    mgr.close()
    store.close()  # clean shutdown: checkpoint at the last LSN
    cp = read_checkpoint(tmp_home / "system" / "edb.chk")
    gen = list_generations(tmp_home / "logs")[2]
    victim = record_offsets(gen)[2]
    assert cp is not None and victim.lsn < cp.lsn  # e.g. LSN 7 of 13: applied, below the checkpoint
    patch_file(gen, victim.offset + 30)  # a flipped bit in its payload

    caplog.set_level(logging.WARNING, logger="pycertsrv.store")
    store = Store.open(tmp_home, OPTS)
    try:
        assert request_ids(store) == list(range(1, 12))  # the CA serves
        warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"log damage in {gen.name}" in m and f"LSN {victim.lsn}" in m and "must be full" in m
                   for m in warn), warn
        h = store.health()
        assert h.state == "ok" and h.log_damage[0]["lsn"] == victim.lsn
        assert h.backup_full_required and "log damage" in h.backup_full_required
        assert "log damage" in h.summary and "next backup must be full" in h.summary
        commit_request(store, 12)  # and takes writes
        mgr = BackupManager(store, Home.at(tmp_home), 600.0)
        with pytest.raises(Conflict) as ei:
            mgr.prepare("op", 1, 0)
        assert ei.value.hresult == JET_ERR_MISSING_FULL_BACKUP
        assert "log damage" in ei.value.message and "take a full backup first" in ei.value.message
        assert mgr.status() is None  # nothing left locked
        # The full backup, written and verified by the real backup writer and verifier.
        sessions = lambda kind: LocalSession(mgr, kind)  # noqa: E731
        run_backup(sessions, tmp_path / "full2", database_only=True, keep_log=True, password=b"pw")
        assert store.health().backup_full_required is None  # cleared by the full backup
        commit_request(store, 13)
        run_backup(sessions, tmp_path / "inc1", kind="incremental", database_only=True,  # the chain starts again
                   password=b"pw")  # every set is authenticated with its password
        for d in ("full2", "inc1"):
            rep = verify_backup(tmp_path / d, b"pw")
            assert rep.ok, rep.problems
        mgr.close()
    finally:
        store.close()
    # The full backup taken after the damage starts after the damaged generation, and with the incremental
    # it restores everything.
    full2, inc1 = tmp_path / "full2" / "DataBase", tmp_path / "inc1" / "DataBase"
    assert gen.name not in {p.name for p in list_generations(full2).values()}
    db = next(full2.glob("*.db"))
    scratch = tmp_path / "restored"
    scratch.mkdir()
    for p in list(list_generations(full2).values()) + list(list_generations(inc1).values()):
        shutil.copyfile(p, scratch / p.name)
    shutil.copyfile(db, scratch / db.name)
    gens = sorted(list_generations(scratch))
    hard_recover(scratch / db.name, scratch, gens[0], gens[-1])
    conn = sqlite3.connect(scratch / db.name)
    try:
        assert sorted(r[0] for r in conn.execute("SELECT request_id FROM request")) == list(range(1, 14))
    finally:
        conn.close()
    # Reported once: a later start does not ask for yet another full backup.
    with Store.open(tmp_home, OPTS) as again:
        assert again.health().backup_full_required is None


def test_damage_recovery_needs_refuses_and_names_the_restore(tmp_home: Path, tmp_path: Path) -> None:
    store = Store.create(tmp_home, "t", OPTS)
    mgr = BackupManager(store, Home.at(tmp_home), 600.0)
    for rid in range(1, 4):
        commit_request(store, rid)
    assert backup(mgr, tmp_path / "full1")["recorded"]
    mgr.close()
    old = store.snapshot(tmp_path / "old.db")  # the database as it was before the next records
    for rid in range(4, 9):
        commit_request(store, rid)
    db = store.db_path
    store.close()
    # SQLite lost its newest pages (as after a power loss with the WAL unsynced): recovery needs the log.
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(old.path, db)
    gen = list_generations(tmp_home / "logs")[2]
    victim = next(r for r in record_offsets(gen) if r.lsn > old.lsn + 1)
    patch_file(gen, victim.offset + 30)
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    err = ei.value
    assert err.hresult == JET_ERR_LOG_FILE_CORRUPT and err.function == gen.name
    assert f"offset {victim.offset}" in err.message
    assert "full backup #1" in err.message  # which set: the newest the database knows of
    assert f"certsrv restore --force FULL_SET_DIR [INCREMENTAL_SET_DIR ...] --home {tmp_home.resolve()}" in err.message
    assert "\n" not in str(err)


def _csr(cn: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _certsrv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CERTSRV_HOME"}
    return subprocess.run([sys.executable, "-m", "pycertsrv.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_view_after_damage(tmp_path: Path) -> None:
    """Issue 10 finding 4 from the command line: `view` used to refuse with JET_errLogFileCorrupt."""
    from pycertsrv.ca import Authority

    home = tmp_path / "ca"
    a = Authority.init(home, "Damage CA")
    try:
        ids = [a.submit(_csr(f"h{i}.example")).request_id for i in range(3)]
    finally:
        a.close()  # clean shutdown: everything below the checkpoint
    gen = max(list_generations(home / "logs").values())
    victim = record_offsets(gen)[1]
    patch_file(gen, victim.offset + 30)
    p = _certsrv("view", "--home", str(home), "--json")
    assert p.returncode == 0, p.stderr
    assert set(ids) <= {r["request_id"] for r in json.loads(p.stdout)}
    assert f"log damage in {gen.name}" in p.stderr and "the next backup must be full" in p.stderr
    assert "Traceback" not in p.stderr
    # Damage recovery would need: one line naming the restore, exit 1.
    db = next((home / "db").glob("*.db"))
    snap = tmp_path / "old.db"
    with Store.open(home, OPTS) as s:
        s.snapshot(snap)
        commit_request(s, 1000)
        commit_request(s, 1001)
        last = s.applied_lsn
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(snap, db)
    gen = max(list_generations(home / "logs").values())
    _, recs = logfile.scan(gen, None, keep=True, applied=last)  # steps over the first damage
    # LSN last-1: a whole record follows it, so this is damage, not a torn append (which would be cut).
    patch_file(gen, next(r for r in recs if r.lsn == last - 1).offset + 30)
    os.chmod(gen, 0o600)  # the private home's mode (patch_file widened it; opening would warn about that)
    p = _certsrv("view", "--home", str(home))
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "JET_errLogFileCorrupt" in lines[0] and "certsrv restore --force" in lines[0], p.stderr
    assert "no backup of this CA is recorded" in lines[0]
