"""The engine conformance suite: the contract of :mod:`pycertsrv.store.interface`, once, for every engine.

Each test runs on every entry of ``engines.ENGINES`` (real files, real processes, no mocks). What a test checks
is re-read from the engine after a re-open, from a stream's bytes, or from a database rebuilt by a restore.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import ENGINES, EngineKind
from store_helpers import start_child

from pycertsrv.errors import CertSrvError, InvalidArgument, NotFound
from pycertsrv.store import ByteStream, Engine, SnapshotStream, Until, logfile, schema
from pycertsrv.store.logfile import Op


@pytest.fixture(params=ENGINES, ids=[e.name for e in ENGINES])
def kind(request: pytest.FixtureRequest) -> EngineKind:
    k: EngineKind = request.param
    return k


@pytest.fixture
def engine(kind: EngineKind, tmp_path: Path) -> Iterator[Engine]:
    e = kind.create(tmp_path / "db")
    try:
        yield e
    finally:
        e.close()


def put(key: str, value: str) -> Op:
    return ("setting", "p", schema.row_to_image(schema.table("setting"), {"name": key, "value": value}))


def keys(e: Engine) -> dict[str, str]:
    return {r["name"]: r["value"] for r in e.select("setting", [("name", "like", "k%")])}


def read_all(s: ByteStream) -> bytes:
    out = bytearray()
    while len(out) < s.size:
        chunk = s.read(len(out), 1000)
        assert chunk, f"{s.name} ended at {len(out)} of {s.size}"
        out += chunk
    return bytes(out)


def records(data: bytes) -> list[logfile.Record]:
    """The records of a generation's bytes; any bad frame fails the test."""
    logfile.parse_header(data[:logfile.HEADER_SIZE], "stream")
    out: list[logfile.Record] = []
    for r in logfile.iter_records(data):
        assert isinstance(r, logfile.Record), f"bad frame in a generation stream: {r}"
        out.append(r)
    return out


def rows_of(db: Path) -> dict[str, str]:
    """The ``k*`` settings of a SQLite database file (a snapshot, or a restore's result: SQLite on every engine)."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, value FROM setting WHERE name LIKE 'k%'").fetchall())
    finally:
        conn.close()


def lsn_of(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM _meta WHERE key = 'applied_lsn'").fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------ commit and durability


def test_commits_get_consecutive_lsns_and_survive_a_reopen(kind: EngineKind, tmp_path: Path) -> None:
    place = tmp_path / "db"
    e = kind.create(place)
    try:
        got = [e.commit([put(f"k{i:04d}", str(i)), put(f"k{i:04d}b", "x")]) for i in range(300)]
        lsns = [c.lsn for c in got]
        assert lsns == list(range(lsns[0], lsns[0] + 300))  # commit order, no gaps
        assert all(c.applied for c in got)
        assert e.get("setting", "k0299")["value"] == "299"  # type: ignore[index]
        assert e.count("setting", [("name", "like", "k%")]) == 600
    finally:
        e.close()
    e = kind.open(place)
    try:
        want = {f"k{i:04d}": str(i) for i in range(300)} | {f"k{i:04d}b": "x" for i in range(300)}
        assert keys(e) == want
        assert e.max_value("setting", "name") >= "k0299b"
        # The log holds every LSN once, in order (read back through the generation streams).
        seen = []
        for g in e.generations():
            s = e.open_generation(g.generation)
            try:
                seen += [r.lsn for r in records(read_all(s))]
            finally:
                s.close()
        assert seen == list(range(seen[0], seen[-1] + 1)) and lsns[-1] in seen
    finally:
        e.close()


def test_concurrent_commits_are_gapless_and_all_readable(engine: Engine) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(60):
            c = engine.commit([put(f"k{t}-{i}", str(i))])
            with lock:
                got.append(c.lsn)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(min(got), min(got) + 240))
    assert len(keys(engine)) == 240


def test_an_empty_commit_writes_nothing(engine: Engine) -> None:
    before = engine.generations()[-1].last_lsn
    with pytest.raises(InvalidArgument):
        engine.commit([])
    assert engine.generations()[-1].last_lsn == before


# ------------------------------------------------------------------ crash recovery


def test_every_acknowledged_commit_survives_sigkill_mid_commit(kind: EngineKind, tmp_path: Path) -> None:
    place = tmp_path / "db"
    kind.create(place).close()
    ack = tmp_path / "acks"
    code = ("import os, sys, threading\nfrom pathlib import Path\n" + kind.child_open + r"""
from pycertsrv.store import schema
t = schema.table("setting")
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def work(n):
    i = 0
    while True:
        c = engine.commit([("setting", "p", schema.row_to_image(t, {"name": f"k{n}-{i}", "value": "v"})),
                           ("setting", "p", schema.row_to_image(t, {"name": f"k{n}-{i}-2", "value": "w"}))])
        os.write(fd, f"k{n}-{i} {c.lsn}\n".encode())  # only after commit returned: acknowledged
        i += 1
ts = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
for x in ts: x.start()
for x in ts: x.join()
""")
    for trial in range(3):
        proc = start_child(code, str(place), str(ack))
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if ack.exists() and ack.read_bytes().count(b"\n") >= 150 * (trial + 1):
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the child committed too little")
            os.kill(proc.pid, signal.SIGKILL)  # mid-commit: four threads are committing right now
        finally:
            proc.kill()
            proc.wait()
        acked = [line.split() for line in ack.read_text().splitlines() if line.strip()]
        e = kind.open(place)
        try:
            have = keys(e)
            missing = [k for k, _ in acked if k not in have or f"{k}-2" not in have]
            assert not missing, f"acknowledged commits lost after SIGKILL: {missing[:5]}"
            # Whole records only: every k*-i has its k*-i-2 (one record = both rows).
            assert all((k + "-2" in have) for k in have if not k.endswith("-2"))
        finally:
            e.close()


# ------------------------------------------------------------------ snapshot at one LSN


def test_snapshot_holds_exactly_its_lsn_while_commits_run(engine: Engine, tmp_path: Path) -> None:
    for i in range(100):
        engine.commit([put(f"k{i:05d}", "before")])
    snap = engine.open_snapshot()
    stop = threading.Event()
    later: list[int] = []

    def commit_on() -> None:
        i = 0
        while not stop.is_set():
            later.append(engine.commit([put(f"k9{i:05d}", "during")]).lsn)
            i += 1

    t = threading.Thread(target=commit_on)
    t.start()
    try:
        out = bytearray()
        while len(out) < snap.size:
            out += snap.read(len(out), 4096)
            if len(later) < 50:
                time.sleep(0.001)  # let commits land between the reads
        while len(later) < 50:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    lsn = snap.lsn
    snap.close()
    assert later and min(later) > lsn  # commits ran while the snapshot was read
    path = tmp_path / "snap.db"
    path.write_bytes(bytes(out))
    assert lsn_of(path) == lsn
    rows = rows_of(path)
    assert rows == {f"k{i:05d}": "before" for i in range(100)}  # nothing committed during the read leaked in
    assert all(v == "during" for k, v in keys(engine).items() if k.startswith("k9"))
    with pytest.raises(CertSrvError):
        snap.read(0, 10)  # closed


def test_snapshot_ranges_equal_reads(engine: Engine) -> None:
    for i in range(50):
        engine.commit([put(f"k{i}", "v" * 200)])
    snap = engine.open_snapshot()
    try:
        whole = snap.read(0, snap.size)
        assert len(whole) == snap.size
        assert whole[:16] == b"SQLite format 3\x00" and whole[18:20] == b"\x01\x01"  # a rollback-journal file
        rng = snap.file_range(100, 5000)
        if rng is not None:  # the zero-copy view, when the engine has one, gives the same bytes
            try:
                got = rng.prefix + os.pread(rng.fd, rng.count, rng.offset)
            finally:
                rng.release()
            assert got == whole[100:5100]
        assert snap.read(snap.size, 10) == b"" and snap.read(snap.size - 3, 10) == whole[-3:]
    finally:
        snap.close()


# ------------------------------------------------------------------ generation streams


def _history(engine: Engine) -> tuple[SnapshotStream, list[int]]:
    """A snapshot taken first, then three closed generations of commits; returns (snapshot, closed numbers)."""
    snap = engine.open_snapshot()
    closed = []
    for g in range(3):
        for i in range(40):
            engine.commit([put(f"k{g}-{i:03d}", str(g * 1000 + i))])
        closed.append(engine.roll())
    return snap, closed


def test_generation_streams_sizes_ranges_and_records(engine: Engine) -> None:
    snap, closed = _history(engine)
    snap.close()
    listed = {g.generation: g for g in engine.generations()}
    assert [g for g in closed if not listed[g].closed] == []
    assert not engine.generations()[-1].closed  # only the newest is open
    prev_last = None
    rnd = random.Random(7)
    for number in closed:
        info = listed[number]
        s = engine.open_generation(number)
        try:
            assert s.name == logfile.log_name(number)
            assert s.size == info.size and (s.first_lsn, s.last_lsn) == (info.first_lsn, info.last_lsn)
            data = read_all(s)
            for _ in range(20):  # range reads in any order give the same bytes
                off = rnd.randrange(0, s.size)
                n = rnd.randrange(1, 3000)
                assert s.read(off, n) == data[off:off + n]
            assert s.read(s.size, 100) == b""
            recs = records(data)
            assert [r.lsn for r in recs] == list(range(info.first_lsn, info.last_lsn + 1))
            if prev_last is not None:
                assert info.first_lsn == prev_last + 1  # generations continue each other
            prev_last = info.last_lsn
            rng = s.file_range(0, s.size)
            if rng is not None:
                try:
                    assert rng.prefix + os.pread(rng.fd, rng.count, rng.offset) == data
                finally:
                    rng.release()
        finally:
            s.close()


def test_snapshot_plus_generation_streams_restore_the_same_tables(kind: EngineKind, engine: Engine,
                                                                  tmp_path: Path) -> None:
    snap, closed = _history(engine)
    target = kind.target(tmp_path / "restored.db")
    try:
        assert target.load_snapshot(snap) == snap.lsn
    finally:
        snap.close()
    gens = [engine.open_generation(g) for g in range(snap.generation, max(closed) + 1)]
    try:
        rep = target.replay(gens)
    finally:
        for s in gens:
            s.close()
    assert target.check_integrity() == "ok"
    target.finish()
    assert rep.to_lsn == engine.generations()[-1].first_lsn - 1
    assert rows_of(tmp_path / "restored.db") == keys(engine)


# ------------------------------------------------------------------ truncation


def test_truncation_deletes_below_and_refuses_what_recovery_needs(kind: EngineKind, tmp_path: Path) -> None:
    place = tmp_path / "db"
    e = kind.create(place)
    for g in range(3):
        for i in range(20):
            e.commit([put(f"k{g}-{i}", "v")])
        e.roll()
    current = e.generations()[-1].generation
    with pytest.raises(InvalidArgument):
        e.truncate(current + 1)  # the open generation is needed by recovery
    e.close()  # a clean close: recovery needs nothing below the open generation any more
    e = kind.open(place)
    try:
        current = e.generations()[-1].generation
        deleted = e.truncate(current)
        assert deleted and all(g < current for g in deleted)
        assert [g.generation for g in e.generations()] == [current]
        with pytest.raises(NotFound):
            e.open_generation(deleted[0])
        assert e.truncate(current) == []  # nothing more to delete
    finally:
        e.close()
    e = kind.open(place)  # truncation lost nothing: the tables hold every commit
    try:
        assert len(keys(e)) == 60
    finally:
        e.close()


# ------------------------------------------------------------------ hard recovery with --until


def _restore(kind: EngineKind, engine: Engine, snap: SnapshotStream, closed: list[int], dest: Path,
             until: Until) -> int:
    """Snapshot + the generations after it into ``dest``, stopping at ``until``; returns the LSN reached."""
    target = kind.target(dest)
    try:
        target.load_snapshot(snap)
    finally:
        snap.close()
    gens = [engine.open_generation(g) for g in range(snap.generation, closed[-1] + 1)]
    try:
        rep = target.replay(gens, until)
    finally:
        for s in gens:
            s.close()
    assert rep.stopped_at is not None  # it stopped early, as asked
    assert target.check_integrity() == "ok"
    target.finish()
    return rep.to_lsn


def _after(engine: Engine, lsn: int) -> list[logfile.Record]:
    out = []
    for g in engine.generations():
        s = engine.open_generation(g.generation)
        try:
            out += [r for r in records(read_all(s)) if r.lsn > lsn]
        finally:
            s.close()
    return out


def _rows_until(recs: list[logfile.Record], last: int) -> dict[str, str]:
    want: dict[str, str] = {}
    for r in recs:
        if r.lsn <= last:
            for table, _, image in logfile.decode_payload(r.payload):
                if table == "setting" and str(image[0]).startswith("k"):
                    want[image[0]] = image[1]
    return want


def test_hard_recovery_until_an_lsn(kind: EngineKind, engine: Engine, tmp_path: Path) -> None:
    snap, closed = _history(engine)
    recs = _after(engine, snap.lsn)
    stop = recs[57].lsn  # in the middle of the second generation
    dest = tmp_path / "restored.db"
    assert _restore(kind, engine, snap, closed, dest, Until(lsn=stop)) == stop == lsn_of(dest)
    assert rows_of(dest) == _rows_until(recs, stop)
    assert len(rows_of(dest)) == 58


def test_hard_recovery_until_a_time(kind: EngineKind, engine: Engine, tmp_path: Path) -> None:
    snap, closed = _history(engine)
    recs = _after(engine, snap.lsn)
    # The stop time is a record's own time from the log (no wall clock is asserted on): the first record of
    # the second half whose successor is stamped later.
    k = next(i for i in range(70, len(recs) - 1) if recs[i].ts_us < recs[i + 1].ts_us)
    dest = tmp_path / "restored.db"
    assert _restore(kind, engine, snap, closed, dest, Until(time_us=recs[k].ts_us)) == recs[k].lsn == lsn_of(dest)
    assert rows_of(dest) == _rows_until(recs, recs[k].lsn)
