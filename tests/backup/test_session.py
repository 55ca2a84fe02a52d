"""BackupManager in process against a real store: spec §2.20 state machine, truncation, records."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pycertsrv.backup.history import SETTING_REQUIRES_FULL, backup_history
from pycertsrv.backup.session import BackupManager
from pycertsrv.backup.states import decode_backup_type
from pycertsrv.errors import (
    E_ACCESSDENIED,
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_FILE_NOT_FOUND,
    JET_ERR_BACKUP_IN_PROGRESS,
    JET_ERR_INVALID_BACKUP,
    JET_ERR_INVALID_BACKUP_SEQUENCE,
    JET_ERR_MISSING_FULL_BACKUP,
    CertSrvError,
)
from pycertsrv.home import Home
from pycertsrv.spec import MAX_READ, TAG_CERTSERVER_DATABASE, TAG_CHECKPOINT_DIR, TAG_LOG, TAG_LOG_DIR
from pycertsrv.store import Store, StoreOptions, list_generations, parse_log_name
from support import db_query

from .helpers import add_requests, full_backup, read_all, restore_copy, wal_checkpoint


def hr(exc: pytest.ExceptionInfo[CertSrvError]) -> int:
    return exc.value.hresult


@pytest.mark.parametrize(("grbit", "flags", "kind"), [
    (0, 0, "full"), (0, 1, "full"), (0, 2, "incremental"), (1, 0, "incremental"), (1, 2, "incremental"),
])
def test_decode_backup_type_accepts_spec_encodings(grbit: int, flags: int, kind: str) -> None:
    assert decode_backup_type(grbit, flags) == kind


@pytest.mark.parametrize(("grbit", "flags"), [(0, 3), (0, 4), (1, 1), (2, 0), (4, 1), (0x10, 1), (0, 0xFFFFFFFF)])
def test_decode_backup_type_rejects_others(grbit: int, flags: int) -> None:
    with pytest.raises(CertSrvError) as e:
        decode_backup_type(grbit, flags)
    assert hr(e) == E_INVALIDARG


def test_full_backup_lists_tags_and_restores_to_the_roll(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    add_requests(store, 50, tag="before")
    out = tmp_path / "set"
    written_between: list[int] = []

    def between() -> None:  # issued after the snapshot, before the roll: must come back from the logs
        written_between.extend(add_requests(store, 30, tag="during"))

    res = full_backup(mgr, out, between=between, truncate=False)
    assert [e[0] for e in res["dbs"]] == [TAG_CERTSERVER_DATABASE]
    assert res["dbs"][0][1:] == str(store.db_path)
    assert all(e[0] == TAG_LOG for e in res["logs"]) and res["logs"]
    add_requests(store, 10, tag="after")  # after the roll: not in the set
    gens = [parse_log_name(Path(e[1:]).name) for e in res["logs"]]
    assert gens == list(range(gens[0], gens[-1] + 1))  # type: ignore[operator]
    db = restore_copy(out / store.db_path.name, out, tmp_path / "scratch", gens[0], gens[-1])  # type: ignore[arg-type]
    got = {r[0] for r in db_query(db, "SELECT requester FROM request")}
    assert got == {"before", "during"}
    assert db_query(db, "SELECT COUNT(*) FROM request")[0][0] == 80
    assert db_query(db, "PRAGMA integrity_check")[0][0] == "ok"
    hist = backup_history(store)
    assert len(hist) == 1 and hist[0].kind == "full" and (hist[0].gen_low, hist[0].gen_high) == (gens[0], gens[-1])
    assert hist[0].snapshot_lsn is not None and not hist[0].truncated
    assert res["end"]["recorded"] is True


def test_database_locations_tags(mgr: BackupManager, store: Store) -> None:
    h = mgr.prepare("op", 0, 1)
    locs = mgr.database_locations(h)
    assert locs == [TAG_CERTSERVER_DATABASE + str(store.db_path), TAG_LOG_DIR + str(store.log_dir),
                    TAG_CHECKPOINT_DIR + str(store.system_dir)]
    assert [ord(e[0]) for e in locs] == [0x44, 0x82, 0x83]
    mgr.end(h)


def test_one_backup_at_a_time(mgr: BackupManager) -> None:
    h = mgr.prepare("alice", 0, 1)
    with pytest.raises(CertSrvError) as e:
        mgr.prepare("alice", 0, 1)
    assert hr(e) == E_UNEXPECTED
    with pytest.raises(CertSrvError) as e:
        mgr.prepare("bob", 0, 1)
    assert hr(e) == JET_ERR_BACKUP_IN_PROGRESS and "alice" in e.value.message
    # bob cannot drive alice's session even with its handle
    with pytest.raises(CertSrvError) as e:
        mgr.backup_logs(h, "bob")
    assert hr(e) == E_UNEXPECTED
    mgr.end(h, "alice")
    h2 = mgr.prepare("bob", 0, 1)
    mgr.end(h2)


def test_incremental_needs_a_full_backup(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    with pytest.raises(CertSrvError) as e:
        mgr.prepare("op", 0, 2)
    assert hr(e) == JET_ERR_MISSING_FULL_BACKUP
    assert mgr.status() is None  # nothing left locked
    full = full_backup(mgr, tmp_path / "full", truncate=False)
    add_requests(store, 5)
    h = mgr.prepare("op", 1, 0)
    with pytest.raises(CertSrvError) as e:
        mgr.database_names(h)
    assert hr(e) == JET_ERR_INVALID_BACKUP_SEQUENCE
    logs = mgr.backup_logs(h)
    full_high = parse_log_name(Path(full["logs"][-1][1:]).name)
    assert parse_log_name(Path(logs[0][1:]).name) == full_high + 1  # type: ignore[operator]
    for e2 in logs:
        read_all(mgr, h, e2[1:], tmp_path / Path(e2[1:]).name)
    assert mgr.end(h)["recorded"]
    hist = backup_history(store)
    assert [r.kind for r in hist] == ["full", "incremental"]
    assert hist[1].gen_low == hist[0].gen_high + 1 and hist[1].snapshot_lsn is None


def test_incremental_refused_after_restore_until_full(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    full_backup(mgr, tmp_path / "a", truncate=False)
    with store.transaction() as tx:  # what the restore side writes
        tx.put("setting", {"name": SETTING_REQUIRES_FULL, "value": "1"})
    with pytest.raises(CertSrvError) as e:
        mgr.prepare("op", 0, 2)
    assert hr(e) == JET_ERR_MISSING_FULL_BACKUP
    full_backup(mgr, tmp_path / "b", truncate=False)
    assert store.get("setting", SETTING_REQUIRES_FULL) is None
    assert store.get("setting", "DBLastFullBackup") is not None
    mgr.end(mgr.prepare("op", 0, 2))


def test_incremental_refused_with_circular_logging(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "c")
    store = Store.create(home.root, "Circ CA", StoreOptions(circular_logging=True))
    try:
        mgr = BackupManager(store, home, 600)
        full_backup(mgr, tmp_path / "set")  # a full backup still works
        with pytest.raises(CertSrvError) as e:
            mgr.prepare("op", 0, 2)
        assert hr(e) == JET_ERR_INVALID_BACKUP
    finally:
        store.close()


def test_sequencing_errors(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    add_requests(store, 3)
    for call in (lambda: mgr.database_names("nope"), lambda: mgr.read("nope", 10), lambda: mgr.end("nope"),
                 lambda: mgr.close_file("nope"), lambda: mgr.truncate_logs("nope")):
        with pytest.raises(CertSrvError) as e:
            call()
        assert hr(e) == E_UNEXPECTED
    h = mgr.prepare("op", 0, 1)
    db = mgr.database_names(h)[0][1:]
    for call in (lambda: mgr.read(h, 10), lambda: mgr.close_file(h), lambda: mgr.truncate_logs(h)):
        with pytest.raises(CertSrvError) as e:
            call()
        assert hr(e) == E_UNEXPECTED
    size = mgr.open_file(h, db)
    assert size > 0
    with pytest.raises(CertSrvError) as e:
        mgr.open_file(h, db)
    assert hr(e) == E_UNEXPECTED and "open" in e.value.message
    with pytest.raises(CertSrvError) as e:
        mgr.backup_logs(h)
    assert hr(e) == E_UNEXPECTED
    assert len(mgr.read(h, 10)) == 10
    with pytest.raises(CertSrvError) as e:
        mgr.read(h, 0)
    assert hr(e) == E_INVALIDARG
    mgr.close_file(h)  # not read to the end
    logs = mgr.backup_logs(h)
    with pytest.raises(CertSrvError) as e:
        mgr.open_file(h, db)  # database files only before the log list (ESE-LogInfo)
    assert hr(e) == E_UNEXPECTED
    with pytest.raises(CertSrvError) as e:
        mgr.database_names(h)
    assert hr(e) == E_UNEXPECTED
    for e2 in logs:
        read_all(mgr, h, e2[1:], tmp_path / Path(e2[1:]).name)
    before = set(list_generations(store.log_dir))
    with pytest.raises(CertSrvError) as e:
        mgr.truncate_logs(h)  # the database was not read to its end
    assert hr(e) == E_UNEXPECTED and store.db_path.name in e.value.message
    assert set(list_generations(store.log_dir)) == before  # nothing deleted
    assert mgr.end(h)["recorded"] is False  # incomplete: not a base for incrementals
    assert backup_history(store) == []
    with pytest.raises(CertSrvError) as e:
        mgr.backup_logs(h)
    assert hr(e) == E_UNEXPECTED


def test_truncate_keeps_what_recovery_needs(mgr: BackupManager, store: Store, home: Home, tmp_path: Path) -> None:
    add_requests(store, 600)  # several 64 KiB generations
    assert len(list_generations(store.log_dir)) > 2
    res = full_backup(mgr, tmp_path / "set")
    listed = {parse_log_name(Path(e[1:]).name) for e in res["logs"]}
    # everything up to the roll is in the snapshot or the listed logs; nothing newer goes
    assert res["deleted"] and max(res["deleted"]) <= max(listed)  # type: ignore[type-var]
    remaining = set(list_generations(store.log_dir))
    cp = store.last_checkpoint
    assert cp is not None and all(g >= min(cp.generation, max(listed) + 1) for g in remaining)  # type: ignore[type-var]
    assert store.current_generation in remaining
    assert backup_history(store)[0].truncated
    add_requests(store, 5, tag="later")
    n = store.count("request")
    store.close()
    again = Store.open(home.root)  # soft recovery works with what is left
    try:
        assert again.count("request") == n
    finally:
        again.close()


def test_path_tricks_are_refused_and_nothing_read(mgr: BackupManager, store: Store, home: Home,
                                                  tmp_path: Path) -> None:
    home.publish_dir.mkdir(parents=True, exist_ok=True)
    (home.publish_dir / "ca.crt").write_bytes(b"cert")
    (home.publish_dir / "evil.crl").symlink_to("/etc/passwd")
    h = mgr.prepare("op", 0, 1)
    db = mgr.database_names(h)[0][1:]
    dyn = mgr.dynamic_files(h)
    assert dyn == [str(home.publish_dir / "ca.crt")]  # the symlink is not listed
    logs = [e[1:] for e in mgr.backup_logs(h)]
    tricks = [
        "/etc/passwd",
        str(store.checkpoint_path),
        str(home.publish_dir / "evil.crl"),
        Path(logs[0]).name,  # relative
        str(store.log_dir / ".." / "logs" / Path(logs[0]).name),
        TAG_LOG + logs[0],  # tag not removed
        logs[0] + "\0",
        db + "-wal",
        "",
    ]
    for name in tricks:
        with pytest.raises(CertSrvError) as e:
            mgr.open_file(h, name)
        assert hr(e) == ERROR_FILE_NOT_FOUND, name
        with pytest.raises(CertSrvError):
            mgr.read(h, 10)  # nothing is open
    # a listed generation swapped for a symlink after listing
    target = Path(logs[-1])
    os.chmod(target, 0o644)
    target.unlink()
    target.symlink_to("/etc/passwd")
    with pytest.raises(CertSrvError) as e:
        mgr.open_file(h, str(target))
    assert hr(e) == E_ACCESSDENIED
    assert mgr.open_file(h, dyn[0]) == 4  # dynamic files are readable once listed
    assert mgr.read(h, 100) == b"cert"
    mgr.close_file(h)
    mgr.end(h)


def test_expiry_releases_lock_and_pin(mgr: BackupManager, store: Store, home: Home, clock: object) -> None:
    add_requests(store, 5, tag="seed")
    h = mgr.prepare("alice", 0, 1)
    db = mgr.database_names(h)[0][1:]
    mgr.open_file(h, db)
    assert not home.staging_dir.exists() or not any(home.staging_dir.iterdir())  # read in place, no copy
    add_requests(store, 5, tag="pinned")
    frames, done = wal_checkpoint(store.db_path)
    assert frames > done  # the session's read transaction keeps checkpoints out of the database file
    clock.now += 599  # type: ignore[attr-defined]
    assert mgr.expire_idle() == []
    clock.now += 2  # type: ignore[attr-defined]
    assert mgr.expire_idle() == [h]
    frames, done = wal_checkpoint(store.db_path)
    assert frames == done  # released with the session
    with pytest.raises(CertSrvError) as e:
        mgr.read(h, 10)
    assert hr(e) == E_UNEXPECTED
    mgr.end(mgr.prepare("bob", 0, 1))
    assert backup_history(store) == [] or backup_history(store)[-1].kind == "full"


def test_pin_outlasts_a_range_being_sent(mgr: BackupManager, store: Store, clock: object) -> None:
    """Expiry during a (very slow) send must not let checkpoints change pages that are still to be sent."""
    add_requests(store, 20, tag="a")
    h = mgr.prepare("op", 0, 1)
    name = mgr.database_names(h)[0][1:]
    size = mgr.open_file(h, name)
    rng = mgr.read_range(h, size)
    with open(store.db_path, "rb") as f:
        before = f.read(size)
    clock.now += 601  # type: ignore[attr-defined]
    assert mgr.expire_idle() == [h]
    add_requests(store, 50, tag="b")
    frames, done = wal_checkpoint(store.db_path)
    assert frames > done  # still pinned: the range is being sent
    assert os.pread(rng.fd, rng.count, rng.offset) == before[rng.offset:rng.offset + rng.count] and rng.count > 0
    rng.close()
    frames, done = wal_checkpoint(store.db_path)
    assert frames == done  # the pin ended with the last range
    with open(store.db_path, "rb") as f:
        assert f.read(size) != before


def test_pinned_database_file_does_not_change(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    """While the session reads the live file in place, commits and checkpoints leave it untouched."""
    add_requests(store, 40, tag="before")
    h = mgr.prepare("op", 0, 1)
    name = mgr.database_names(h)[0][1:]
    size = mgr.open_file(h, name)
    with open(store.db_path, "rb") as f:
        live_before = f.read(size)
    first = mgr.read(h, 4096)
    add_requests(store, 200, tag="during")
    store.checkpoint()
    rest = b"".join(iter(lambda: mgr.read(h, 65536), b""))
    mgr.close_file(h)
    with open(store.db_path, "rb") as f:
        assert f.read(size) == live_before
    streamed = first + rest
    assert len(streamed) == size
    # The copy says "rollback journal" (file format bytes 18-19 = 1) where the live file says WAL (2).
    assert live_before[18:20] == b"\x02\x02" and streamed[18:20] == b"\x01\x01"
    assert streamed[:18] + streamed[20:] == live_before[:18] + live_before[20:]
    copy = tmp_path / "copy.db"
    copy.write_bytes(streamed)
    assert db_query(copy, "PRAGMA integrity_check")[0][0] == "ok"
    assert db_query(copy, "PRAGMA journal_mode")[0][0] == "delete"
    assert {r[0] for r in db_query(copy, "SELECT requester FROM request")} == {"before"}
    assert int(db_query(copy, "SELECT value FROM _meta WHERE key = 'applied_lsn'")[0][0]) == mgr.info(h)["snapshot_lsn"]
    mgr.backup_logs(h)
    frames, done = wal_checkpoint(store.db_path)
    assert frames == done  # the log list ends the pin (the database can no longer be opened)
    mgr.end(h)


def test_read_range_gives_the_same_bytes_as_read(mgr: BackupManager, store: Store) -> None:
    add_requests(store, 30, tag="x")
    h = mgr.prepare("op", 0, 1)
    name = mgr.database_names(h)[0][1:]
    size = mgr.open_file(h, name)
    by_read = b"".join(iter(lambda: mgr.read(h, 7000), b""))
    mgr.close_file(h)
    mgr.open_file(h, name)
    pieces = []
    for n in (10, 90, 5000, 1 << 20):  # the first pieces straddle the 100-byte header
        rng = mgr.read_range(h, n)
        try:
            pieces.append(rng.prefix + os.pread(rng.fd, rng.count, rng.offset))
        finally:
            rng.close()
    rng = mgr.read_range(h, 10)
    rng.close()
    assert (rng.prefix, rng.count) == (b"", 0)  # the end of the file
    mgr.close_file(h)
    assert [len(p) for p in pieces] == [10, 90, 5000, size - 5100]
    assert b"".join(pieces) == by_read and len(by_read) == size
    mgr.end(h)


def test_backup_keeps_sqlite_file_locks(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    """POSIX record locks belong to the process: closing any descriptor of the database file drops SQLite's.
    If a backup did that, another process closing its connection would find the database unused, and
    checkpoint and delete the WAL under the store."""
    add_requests(store, 10, tag="a")
    h = mgr.prepare("op", 0, 1)
    name = mgr.database_names(h)[0][1:]
    mgr.open_file(h, name)
    mgr.read(h, 1000)
    for _ in range(3):
        mgr.read_range(h, 5000).close()
    mgr.close_file(h)
    mgr.open_file(h, name)  # read again, left open: End closes it
    mgr.read(h, 10)
    mgr.end(h)
    add_requests(store, 5, tag="b")  # frames in the WAL that only the WAL holds
    other = ("import sqlite3, sys\n"
             "c = sqlite3.connect(sys.argv[1])\n"
             "print(c.execute('SELECT COUNT(*) FROM request').fetchone()[0])\n"
             "c.close()\n")
    r = subprocess.run([sys.executable, "-c", other, str(store.db_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "15", r.stderr
    assert store.db_path.with_name(store.db_path.name + "-wal").exists()
    add_requests(store, 1, tag="c")  # the store still writes and reads its WAL
    assert store.count("request") == 16


def test_copy_when_the_wal_cannot_be_checkpointed(mgr: BackupManager, store: Store, home: Home,
                                                  tmp_path: Path) -> None:
    """A reader holding an older view blocks the complete checkpoint a pin needs: a staging copy is made."""
    add_requests(store, 20, tag="before")
    old = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        old.execute("BEGIN")
        old.execute("SELECT COUNT(*) FROM request").fetchone()  # holds the view of 20 requests
        add_requests(store, 10, tag="also")
        h = mgr.prepare("op", 0, 1)
        staged = list(home.staging_dir.iterdir())
        assert len(staged) == 1 and [p.name for p in staged[0].iterdir()] == [store.db_path.name]
    finally:
        old.close()
    out = tmp_path / "set"
    out.mkdir()
    for e in mgr.database_names(h):
        read_all(mgr, h, e[1:], out / Path(e[1:]).name)
    logs = mgr.backup_logs(h)
    assert not staged[0].exists()  # the copy is deleted once the log list is given
    for e in logs:
        read_all(mgr, h, e[1:], out / Path(e[1:]).name)
    mgr.end(h)
    assert not home.staging_dir.exists() or not any(home.staging_dir.iterdir())
    assert (out / store.db_path.name).read_bytes()[18:20] == b"\x01\x01"
    gens = [parse_log_name(Path(e[1:]).name) for e in logs]
    db = restore_copy(out / store.db_path.name, out, tmp_path / "r", gens[0], gens[-1])  # type: ignore[arg-type]
    assert db_query(db, "SELECT COUNT(*) FROM request")[0][0] == 30
    assert db_query(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_stale_staging_removed_at_start(store: Store, home: Home) -> None:
    stale = home.staging_dir / "backup-deadbeef"
    stale.mkdir(parents=True)
    (stale / "x.db").write_bytes(b"x")
    BackupManager(store, home, 600)
    assert not stale.exists()


def test_backup_while_writers_run(mgr: BackupManager, store: Store, tmp_path: Path) -> None:
    """Writers keep committing during the whole session; everything committed before the roll comes back."""
    add_requests(store, 20, tag="seed")
    stop = threading.Event()
    committed: list[tuple[int, int]] = []  # (request id, commit order)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            while not stop.is_set():
                rid = add_requests(store, 1, tag=tag)[0]
                with lock:
                    committed.append((rid, len(committed)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def checkpointer() -> None:  # checkpoints must not reach the pinned database file either
        try:
            while not stop.is_set():
                store.checkpoint()
                stop.wait(0.01)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    threads.append(threading.Thread(target=checkpointer))
    for t in threads:
        t.start()
    out = tmp_path / "set"
    out.mkdir()
    h = mgr.prepare("op", 0, 1)
    for e in mgr.database_names(h):
        read_all(mgr, h, e[1:], out / Path(e[1:]).name, chunk=4096)
    with lock:
        before_roll = {rid for rid, _ in committed}
    logs = mgr.backup_logs(h)
    for e in logs:
        read_all(mgr, h, e[1:], out / Path(e[1:]).name, chunk=4096)
    mgr.end(h)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    gens = [parse_log_name(Path(e[1:]).name) for e in logs]
    db = restore_copy(out / store.db_path.name, out, tmp_path / "r", gens[0], gens[-1])  # type: ignore[arg-type]
    got = {r[0] for r in db_query(db, "SELECT request_id FROM request")}
    assert before_roll <= got
    # no partial transaction: each request has both of its attribute rows
    bad = db_query(db, "SELECT r.request_id FROM request r LEFT JOIN attribute a ON a.request_id = r.request_id "
                   "GROUP BY r.request_id HAVING COUNT(a.name) != 2")
    assert bad == []
    assert db_query(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_read_is_bounded(mgr: BackupManager, home: Home) -> None:
    home.publish_dir.mkdir(parents=True, exist_ok=True)
    big = home.publish_dir / "big.crl"
    big.write_bytes(os.urandom(MAX_READ + 100))
    h = mgr.prepare("op", 0, 1)
    assert mgr.dynamic_files(h) == [str(big)]
    assert mgr.open_file(h, str(big)) == MAX_READ + 100
    first = mgr.read(h, 10 * MAX_READ)
    assert len(first) == MAX_READ
    assert first + mgr.read(h, 10 * MAX_READ) == big.read_bytes()
    assert mgr.read(h, 10) == b""
    mgr.close_file(h)
    mgr.end(h)


def test_short_idle_limit_applies_once_files_are_read(store: Store, home: Home, clock: object) -> None:
    """Issue #10: idle for the short limit during reads ends the session; before reading, the ceiling applies."""
    add_requests(store, 3, tag="a")
    m = BackupManager(store, home, 600.0, idle_timeout=60.0, clock=clock)  # type: ignore[arg-type]
    try:
        h = m.prepare("op", 0, 1)
        name = m.database_names(h)[0][1:]
        clock.now += 120  # type: ignore[attr-defined]
        assert m.expire_idle() == []  # not reading yet: 600 s ceiling
        st = m.status()
        assert st is not None and st["idle_limit"] == 600.0 and st["open_file"] is None
        size = m.open_file(h, name)
        data = m.read(h, 1000)
        st = m.status()
        assert st is not None and st["idle_limit"] == 60.0 and st["bytes_sent"] == len(data)
        assert st["open_file"] == Path(name).name and st["open_file_pos"] == len(data) and st["open_file_size"] == size
        assert st["files_listed"] == 1 and st["files_done"] == 0 and st["principal"] == "op" and st["kind"] == "full"
        clock.now += 59  # type: ignore[attr-defined]
        m.touch(h)  # a piece of an answer was accepted: progress
        clock.now += 59  # type: ignore[attr-defined]
        assert m.expire_idle() == []
        clock.now += 2  # type: ignore[attr-defined]
        assert m.expire_idle() == [h] and m.status() is None
        with pytest.raises(CertSrvError) as e:
            m.read(h, 10)
        assert hr(e) == E_UNEXPECTED and "idle for more than 60s" in e.value.message
        frames, done = wal_checkpoint(store.db_path)
        assert frames == done  # pin released
        # The idle limit never exceeds the ceiling.
        assert BackupManager(store, home, 30.0, idle_timeout=60.0).idle_timeout == 30.0
    finally:
        m.close()


def test_session_ends_when_every_holder_connection_is_gone(mgr: BackupManager, store: Store, home: Home) -> None:
    add_requests(store, 3, tag="a")
    closed: set[int] = set()
    a, b = object(), object()
    h = mgr.prepare("op", 0, 1)
    assert mgr.end_if_gone(lambda t: True) is None  # no holder: only the idle limit can end it
    mgr.hold(h, a, "op")
    mgr.hold(h, b, "op")
    mgr.hold(h, a, "op")  # once per connection
    with pytest.raises(CertSrvError) as e:
        mgr.hold(h, object(), "mallory")  # another caller cannot bind (nor learn of) the session
    assert hr(e) == E_UNEXPECTED
    name = mgr.database_names(h)[0][1:]
    mgr.open_file(h, name)
    closed.add(id(a))
    assert mgr.end_if_gone(lambda t: id(t) in closed) is None and mgr.status() is not None
    closed.add(id(b))
    ended = mgr.end_if_gone(lambda t: id(t) in closed)
    assert ended is not None and ended["ended"] == "the client's connection closed" and ended["principal"] == "op"
    assert mgr.status() is None and not mgr.active
    frames, done = wal_checkpoint(store.db_path)
    assert frames == done
    with pytest.raises(CertSrvError) as e:
        mgr.close_file(h, "op")
    assert hr(e) == E_UNEXPECTED and "the client's connection closed" in e.value.message
    mgr.end(mgr.prepare("op", 0, 1), "op")  # the next backup starts


def test_abort_ends_a_session_at_once_and_records_nothing(mgr: BackupManager, store: Store, home: Home,
                                                          tmp_path: Path) -> None:
    add_requests(store, 3, tag="a")
    with pytest.raises(CertSrvError) as e:
        mgr.abort("uid:1")
    assert hr(e) == E_UNEXPECTED and "nothing to abort" in e.value.message
    h = mgr.prepare("alice", 0, 1)
    name = mgr.database_names(h)[0][1:]
    read_all(mgr, h, name, tmp_path / "db")
    mgr.backup_logs(h)
    ended = mgr.abort("uid:1")
    assert ended["principal"] == "alice" and ended["ended"] == "aborted by uid:1" and ended["files_done"] == 1
    assert mgr.status() is None and backup_history(store) == []  # aborted: not recorded even if complete
    with pytest.raises(CertSrvError) as e:
        mgr.end(h, "alice")
    assert hr(e) == E_UNEXPECTED and "aborted by uid:1" in e.value.message
    assert not home.staging_dir.exists() or not any(home.staging_dir.iterdir())
