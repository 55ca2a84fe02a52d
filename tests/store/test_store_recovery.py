"""Soft recovery against damaged logs: torn tails are cut and reported; anything else refuses to open.

Each test builds a home whose database is rewound to an early snapshot, so opening it would replay
every later record: "nothing applied" is then visible as an unchanged applied LSN and unchanged tables.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from store_helpers import (
    abandon,
    commit_request,
    cut_to_records,
    dump_db,
    file_hashes,
    patch_file,
    record_offsets,
    write_at_end,
)

from pycertsrv.errors import (
    JET_ERR_BAD_LOG_SIGNATURE,
    JET_ERR_LOG_FILE_CORRUPT,
    JET_ERR_MISSING_LOG_FILE,
    CorruptData,
)
from pycertsrv.store import Store, StoreOptions, list_generations, log_name, logfile, read_checkpoint
from pycertsrv.store.logfile import encode_payload

N = 24
OPTS = StoreOptions(log_size=2048, checkpoint_records=0)


def build(home: Path, n: int = N) -> Path:
    """A closed home with ``n`` committed requests over several generations, its database rewound to LSN 0."""
    store = Store.create(home, "t", OPTS)
    snap = store.snapshot(home.parent / "empty.db")
    assert snap.lsn == 0
    for rid in range(1, n + 1):
        commit_request(store, rid, payload=bytes(range(200)))
    db = store.db_path
    store.close()
    rewind(db, snap.path)
    return db


def rewind(db: Path, snapshot: Path) -> None:
    """Put an older copy of the database in place (as if SQLite had lost everything after it)."""
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(snapshot, db)


def rows(store: Store) -> list[int]:
    return sorted(r["request_id"] for r in store.select("request"))


def assert_refused(home: Path, db: Path, code: int, file_name: str, *needles: str) -> CorruptData:
    """Opening must fail with ``code`` naming ``file_name``; the database and logs stay as they were."""
    before_db = dump_db(db)
    before_logs = file_hashes(home / "logs")
    with pytest.raises(CorruptData) as ei:
        Store.open(home, OPTS)
    err = ei.value
    assert err.hresult == code, str(err)
    assert err.function == file_name and file_name in str(err)
    for needle in needles:
        assert needle in err.message, err.message
    assert dump_db(db) == before_db  # nothing applied
    assert before_db["applied_lsn"] == 0
    assert file_hashes(home / "logs") == before_logs  # nothing cut
    assert not Store(home, OPTS).lock.is_held()  # the failed open let go of the home
    return err


# ------------------------------------------------------------------ torn tail


@pytest.mark.parametrize("kind", ["partial-header", "partial-payload", "bad-checksum"])
def test_torn_tail_is_cut_and_reported(tmp_home: Path, kind: str) -> None:
    db = build(tmp_home)
    newest = list_generations(tmp_home / "logs")[max(list_generations(tmp_home / "logs"))]
    ident = bytes.fromhex(dict(dump_db(db)["_meta"])["identity"])
    assert logfile.read_header(newest, ident).generation == max(list_generations(tmp_home / "logs"))
    # Ends in non-zero bytes: a torn write leaves zeroes (the preallocated room) where they are missing.
    payload = encode_payload([["request", "p", [N + 1] + [None] * 17 + ["2030-01-01T00:00:00+00:00"]]])
    frame = logfile.encode_record(N + 1, logfile.now_us(), payload)
    if kind == "partial-header":
        tail = frame[:10]
    elif kind == "partial-payload":
        tail = frame[: len(frame) - 7]
    else:
        bad = bytearray(frame)
        bad[-3] ^= 0x20
        tail = bytes(bad)
    # The append goes where the last record ends: inside the generation's preallocated room.
    good_size = write_at_end(newest, tail)
    size = newest.stat().st_size
    assert size >= good_size + len(tail)

    store = Store.open(tmp_home, OPTS)
    try:
        rep = store.recovery
        assert rep.torn_tail is not None
        assert rep.torn_tail["file"] == newest.name
        assert rep.torn_tail["offset"] == good_size
        assert rep.torn_tail["bytes"] == size - good_size
        assert newest.name in rep.summary() and f"offset {good_size}" in rep.summary()
        assert rep.replayed == N and rep.to_lsn == N and not rep.clean
        assert rows(store) == list(range(1, N + 1))  # every earlier record kept, the torn one not applied
        assert len(store.select("attribute")) == 2 * N
        assert store.integrity_check() == "ok"
        # The log ends at the last whole record and the next commit follows it.
        assert newest.stat().st_size == good_size
        commit_request(store, N + 1)
    finally:
        store.close()
    store = Store.open(tmp_home, OPTS)
    try:
        assert store.recovery.replayed == 0 and store.recovery.torn_tail is None
        assert rows(store) == list(range(1, N + 2))
    finally:
        store.close()


# ------------------------------------------------------------------ corruption in the middle

FIELDS = {  # offsets in a version-2 frame: CRC 0..3, length 4..7, LSN 8..15, time 16..23, payload
    "crc": 1,
    "length-low": 4,  # frame becomes misaligned: checksum fails with bytes after it
    "length-high": 6,  # frame runs past end of file although whole records follow it
    "lsn": 8,
    "time": 17,
    "payload": logfile.REC.size + 5,
}


@pytest.mark.parametrize("where", ["closed-generation", "current-generation"])
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_flipped_byte_in_middle_record_refuses(tmp_home: Path, field: str, where: str) -> None:
    db = build(tmp_home)
    gens = list_generations(tmp_home / "logs")
    if where == "closed-generation":
        path = gens[sorted(gens)[len(gens) // 2]]
    else:
        # The current generation needs records after the damaged one; add some without a roll.
        store = Store.open(tmp_home, StoreOptions(log_size=1 << 20, checkpoint_records=0))
        for rid in range(N + 1, N + 6):
            commit_request(store, rid)
        store.close()
        rewind(db, tmp_home.parent / "empty.db")
        path = gens[max(gens)]
    recs = record_offsets(path)
    assert len(recs) >= 3
    victim = recs[len(recs) // 2]
    patch_file(path, victim.offset + FIELDS[field])
    err = assert_refused(tmp_home, db, JET_ERR_LOG_FILE_CORRUPT, path.name, f"offset {victim.offset}")
    assert "corrupt record" in err.message


def test_checksum_failure_in_record_the_database_holds_is_not_a_torn_tail(tmp_home: Path) -> None:
    """A bad last record whose LSN SQLite already applied was committed: not cut as a torn tail; the store
    opens (issue 10 finding 4: no recovery needs it), reports it, and appends after it."""
    store = Store.create(tmp_home, "t", OPTS)
    for rid in range(1, 6):
        commit_request(store, rid)
    db = store.db_path
    store.close()
    path = list_generations(tmp_home / "logs")[1]
    last = record_offsets(path)[-1]
    patch_file(path, last.offset + logfile.REC.size + 3)
    damaged = path.read_bytes()[: last.offset + logfile.REC.size + len(last.payload)]
    with Store.open(tmp_home, OPTS) as store:
        assert [(d["file"], d["offset"], d["lsn"]) for d in store.recovery.damaged] == [(path.name, last.offset, 5)]
        assert store.health().log_damage and "log damage" in store.health().summary
        commit_request(store, 6)
    assert path.read_bytes()[: len(damaged)] == damaged  # the evidence is kept; later records go to the next
    assert sorted(list_generations(tmp_home / "logs")) == [1, 2]  # generation, so no full backup carries it
    # LSN 6 marks "next backup must be full" (logged), LSN 7 is the request; a second open marks nothing new.
    assert dump_db(db)["applied_lsn"] == 7
    with Store.open(tmp_home, OPTS) as store:
        assert not store.recovery.damaged and store.get("request", 6) is not None
        assert store.health().backup_full_required
    assert dump_db(db)["applied_lsn"] == 7


# ------------------------------------------------------------------ missing or foreign generations


def test_missing_generation_refuses(tmp_home: Path) -> None:
    db = build(tmp_home)
    gens = list_generations(tmp_home / "logs")
    assert len(gens) >= 4
    gone = sorted(gens)[2]
    gens[gone].unlink()
    assert_refused(tmp_home, db, JET_ERR_MISSING_LOG_FILE, log_name(gone), "missing")


@pytest.mark.parametrize("how", ["appended", "replacing"])
def test_foreign_generation_refuses(tmp_home: Path, tmp_path: Path, how: str) -> None:
    db = build(tmp_home)
    gens = list_generations(tmp_home / "logs")
    target = max(gens) + 1 if how == "appended" else sorted(gens)[2]
    # Another database whose log has a generation with the same number.
    other = Store.create(tmp_path / "other", "other", OPTS)
    for rid in range(1, target + 1):
        commit_request(other, rid)
        other.roll_log()
    foreign = other.log_dir / log_name(target)
    other_identity = other.identity
    other.close()
    dest = tmp_home / "logs" / log_name(target)
    if dest.exists():
        dest.chmod(0o644)
    shutil.copyfile(foreign, dest)
    err = assert_refused(tmp_home, db, JET_ERR_BAD_LOG_SIGNATURE, dest.name, other_identity)
    assert "belongs to database" in err.message


def _closed_home(home: Path, *, records_in_newest: int) -> tuple[Path, list[int]]:
    """A cleanly closed home over several generations; the newest holds ``records_in_newest`` records."""
    store = Store.create(home, "t", OPTS)
    for rid in range(1, 11):
        commit_request(store, rid, payload=bytes(range(200)))
    store.roll_log()  # the newest generation starts empty
    for rid in range(11, 11 + records_in_newest):
        commit_request(store, rid)
    db = store.db_path
    store.close()  # checkpoints: edb.chk names the newest generation
    return db, sorted(list_generations(home / "logs"))


@pytest.mark.parametrize("records_in_newest", [0, 3], ids=["empty", "with-records"])
def test_missing_newest_generation_refuses(tmp_home: Path, records_in_newest: int) -> None:
    """Without its newest generation the log would continue in a closed one: refuse, naming the missing file."""
    db, gens = _closed_home(tmp_home, records_in_newest=records_in_newest)
    newest = gens[-1]
    cp = read_checkpoint(tmp_home / "system" / "edb.chk")
    assert cp is not None and cp.generation == newest
    (tmp_home / "logs" / log_name(newest)).unlink()
    before_db, before_logs = dump_db(db), file_hashes(tmp_home / "logs")
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    err = ei.value
    assert err.hresult == JET_ERR_MISSING_LOG_FILE and err.function == log_name(newest)
    assert "missing" in err.message and f"{newest - 1:08X}" in err.message
    assert dump_db(db) == before_db and file_hashes(tmp_home / "logs") == before_logs  # nothing applied or cut
    assert not Store(tmp_home, OPTS).lock.is_held()


def test_missing_newest_generation_refuses_when_the_checkpoint_is_older(tmp_home: Path) -> None:
    """The checkpoint predates the lost generation, but SQLite holds its records: still refused, nothing cut."""
    store = Store.create(tmp_home, "t", OPTS)
    for rid in range(1, 6):
        commit_request(store, rid)
    store.checkpoint()
    for rid in range(6, 30):
        commit_request(store, rid, payload=bytes(range(200)))  # rolls over several generations
    db = store.db_path
    abandon(store)  # no new checkpoint: it still names an older generation
    gens = sorted(list_generations(tmp_home / "logs"))
    cp = read_checkpoint(tmp_home / "system" / "edb.chk")
    assert cp is not None and cp.generation < gens[-1] - 1
    (tmp_home / "logs" / log_name(gens[-1])).unlink()
    before_db, before_logs = dump_db(db), file_hashes(tmp_home / "logs")
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    assert ei.value.hresult == JET_ERR_MISSING_LOG_FILE and ei.value.function == log_name(gens[-1])
    assert f"database is at LSN {before_db['applied_lsn']}" in ei.value.message
    assert dump_db(db) == before_db and file_hashes(tmp_home / "logs") == before_logs


def test_newest_generation_put_back_opens(tmp_home: Path, tmp_path: Path) -> None:
    _, gens = _closed_home(tmp_home, records_in_newest=3)
    saved = tmp_path / log_name(gens[-1])
    shutil.copyfile(tmp_home / "logs" / log_name(gens[-1]), saved)
    (tmp_home / "logs" / log_name(gens[-1])).unlink()
    with pytest.raises(CorruptData):
        Store.open(tmp_home, OPTS)
    shutil.copyfile(saved, tmp_home / "logs" / log_name(gens[-1]))
    with Store.open(tmp_home, OPTS) as store:
        assert rows(store) == list(range(1, 14))
        commit_request(store, 14)
        assert store.current_generation == gens[-1]


# ------------------------------------------------------------------ zero-filled tails (power loss)


def _newest(home: Path) -> Path:
    gens = list_generations(home / "logs")
    return gens[max(gens)]


@pytest.mark.parametrize("zeros", [5, logfile.REC.size, 4096])
def test_zero_filled_tail_is_cut_and_reported(tmp_home: Path, zeros: int) -> None:
    """Power loss can leave the file extended but the appended bytes unwritten (zeroes): a torn tail."""
    build(tmp_home)
    newest = _newest(tmp_home)
    good_size = cut_to_records(newest)  # a generation not preallocated (or whose room was cut before)
    with open(newest, "ab") as f:
        f.write(bytes(zeros))
    store = Store.open(tmp_home, OPTS)
    try:
        rep = store.recovery
        assert rep.torn_tail is not None and rep.torn_tail["file"] == newest.name
        assert rep.torn_tail["offset"] == good_size and rep.torn_tail["bytes"] == zeros
        assert "zero-filled" in rep.torn_tail["reason"] and "zero-filled" in rep.summary()
        assert rep.replayed == N and rows(store) == list(range(1, N + 1))
        assert newest.stat().st_size == good_size  # cut
        commit_request(store, N + 1)
    finally:
        store.close()
    with Store.open(tmp_home, OPTS) as store:
        assert store.recovery.torn_tail is None and rows(store) == list(range(1, N + 2))


@pytest.mark.parametrize("preallocated", [True, False], ids=["preallocated", "appended"])
def test_partial_record_followed_by_zeroes_is_a_torn_tail(tmp_home: Path, preallocated: bool) -> None:
    """The last append half written, and the one after it never written (zeroes): cut at the first."""
    build(tmp_home)
    newest = _newest(tmp_home)
    frame = logfile.encode_record(N + 1, logfile.now_us(), encode_payload([["setting", "p", ["x", "y" * 100]]]))
    torn = frame[:40] + bytes(len(frame) - 40)  # its later sectors never reached the disk
    if not preallocated:
        cut_to_records(newest)
    good_size = write_at_end(newest, torn + bytes(300))
    size = newest.stat().st_size
    with Store.open(tmp_home, OPTS) as store:
        rep = store.recovery
        assert rep.torn_tail is not None and rep.torn_tail["offset"] == good_size
        assert rep.torn_tail["bytes"] == size - good_size
        assert rows(store) == list(range(1, N + 1)) and store.get("setting", "x") is None
    assert newest.stat().st_size == good_size


def test_zeroes_over_a_middle_record_refuse(tmp_home: Path) -> None:
    """Zeroes followed by whole records are damage, not a tail: refuse, cut nothing."""
    db = build(tmp_home)
    newest = _newest(tmp_home)
    store = Store.open(tmp_home, StoreOptions(log_size=1 << 20, checkpoint_records=0))
    for rid in range(N + 1, N + 6):
        commit_request(store, rid)
    store.close()
    rewind(db, tmp_home.parent / "empty.db")
    recs = record_offsets(newest)
    victim = recs[len(recs) // 2]
    data = bytearray(newest.read_bytes())
    end = recs[recs.index(victim) + 1].offset
    data[victim.offset : end] = bytes(end - victim.offset)
    newest.write_bytes(bytes(data))
    err = assert_refused(tmp_home, db, JET_ERR_LOG_FILE_CORRUPT, newest.name, f"offset {victim.offset}")
    assert "corrupt record" in err.message


def test_zero_filled_tail_of_a_closed_generation_refuses(tmp_home: Path) -> None:
    """Only the newest generation can have been cut short by a crash; zeroes after a closed one are damage."""
    db = build(tmp_home)
    gens = list_generations(tmp_home / "logs")
    closed = gens[sorted(gens)[1]]
    closed.chmod(0o644)
    size = closed.stat().st_size
    with open(closed, "ab") as f:
        f.write(bytes(100))
    err = assert_refused(tmp_home, db, JET_ERR_LOG_FILE_CORRUPT, closed.name, f"offset {size}")
    assert "zero-filled" in err.message


@pytest.mark.parametrize("preallocated", [True, False], ids=["preallocated", "appended"])
def test_zeroed_record_the_database_holds_is_not_a_torn_tail(tmp_home: Path, preallocated: bool) -> None:
    """Zeroes where SQLite already has the record: it was committed, so this is damage; refuse, do not cut."""
    store = Store.create(tmp_home, "t", StoreOptions(log_size=64 << 10, checkpoint_records=0))
    for rid in range(1, 6):
        commit_request(store, rid)
    db = store.db_path
    store.close()
    path = list_generations(tmp_home / "logs")[1]
    if not preallocated:
        cut_to_records(path)
    last = record_offsets(path)[-1]
    data = bytearray(path.read_bytes())
    data[last.offset :] = bytes(len(data) - last.offset)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    if preallocated:
        # Indistinguishable from room never written: the log simply ends one record short of SQLite.
        assert ei.value.hresult == JET_ERR_MISSING_LOG_FILE and ei.value.function == log_name(2)
        assert f"database is at LSN 5 but the log ends at LSN 4 in {path.name}" in ei.value.message
    else:
        assert ei.value.hresult == JET_ERR_LOG_FILE_CORRUPT and ei.value.function == path.name
        assert f"offset {last.offset}" in ei.value.message and "zero-filled" in ei.value.message
    assert path.stat().st_size == len(data)
    assert dump_db(db)["applied_lsn"] == 5


# ------------------------------------------------------------------ preallocated generations


def test_preallocated_room_after_a_crash_is_no_torn_tail(tmp_home: Path) -> None:
    """The generation being written is preallocated; after a crash its unused room is just room."""
    opts = StoreOptions(log_size=64 << 10, checkpoint_records=0)
    store = Store.create(tmp_home, "t", opts)
    for rid in range(1, 6):
        commit_request(store, rid)
    path = store.log_dir / log_name(store.current_generation)
    gen = store.current_generation
    abandon(store)
    assert path.stat().st_size == 64 << 10 and logfile.read_header(path).prealloc == 64 << 10
    store = Store.open(tmp_home, opts)
    try:
        assert store.recovery.torn_tail is None and store.recovery.replayed == 0
        commit_request(store, 6)
        assert store.current_generation == gen and path.stat().st_size == 64 << 10  # written inside the room
    finally:
        abandon(store)
    with Store.open(tmp_home, opts) as store:
        assert store.recovery.torn_tail is None and rows(store) == [1, 2, 3, 4, 5, 6]


def test_roll_cuts_the_closed_generation_to_its_records(tmp_home: Path) -> None:
    opts = StoreOptions(log_size=64 << 10, checkpoint_records=0)
    with Store.create(tmp_home, "t", opts) as store:
        for rid in range(1, 4):
            commit_request(store, rid)
        closed = store.roll_log()
        path = store.log_dir / log_name(closed)
        recs = record_offsets(path)
        assert len(recs) == 3
        end = recs[-1].offset + len(logfile.encode_record(recs[-1].lsn, recs[-1].ts_us, recs[-1].payload))
        assert path.stat().st_size == end
        info = {g.generation: g for g in store.generations()}
        assert info[closed].size == end and info[closed].closed
        newest = store.log_dir / log_name(store.current_generation)
        assert newest.stat().st_size == 64 << 10
