"""Engine behaviour: home lock, truncation, snapshots under load, hard recovery, circular logging, reopen."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from store_helpers import HOLDER, abandon, commit_request, dump_db, start_child, wait_line

from pycertsrv.errors import (
    E_INVALIDARG,
    ERROR_SHARING_VIOLATION,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    Conflict,
    CorruptData,
    InvalidArgument,
)
from pycertsrv.store import Store, StoreOptions, hard_recover, list_generations, log_name, logfile


def request_ids(store: Store) -> list[int]:
    return sorted(r["request_id"] for r in store.select("request"))


# ------------------------------------------------------------------ the home lock


def test_second_opener_gets_conflict_naming_holder_pid(tmp_home: Path) -> None:
    Store.create(tmp_home, "t").close()
    proc = start_child(HOLDER, str(tmp_home), stdout=subprocess.PIPE)
    try:
        wait_line(proc, b"ready")
        with pytest.raises(Conflict) as ei:
            Store.open(tmp_home)
        err = ei.value
        assert err.hresult == ERROR_SHARING_VIOLATION
        assert f"pid {proc.pid}" in err.message
        assert err.function == str(tmp_home.resolve())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    # The kernel drops a dead holder's flock: the home opens again, with its data.
    with Store.open(tmp_home) as store:
        assert store.integrity_check() == "ok"


def test_same_process_second_open_conflicts_and_close_releases(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t")
    with pytest.raises(Conflict):
        Store.open(tmp_home)
    store.close()
    Store.open(tmp_home).close()


# ------------------------------------------------------------------ truncation


def test_truncate_logs_refused_past_checkpoint(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t", StoreOptions(checkpoint_records=0))
    try:
        for rid in range(1, 4):
            commit_request(store, rid)
            store.roll_log()
        cp = store.checkpoint()
        assert cp.generation == 4 == store.current_generation
        for rid in range(4, 6):
            commit_request(store, rid)
            store.roll_log()
        assert store.current_generation == 6
        before = sorted(list_generations(store.log_dir))
        for below in (5, 6, 7):
            with pytest.raises(InvalidArgument) as ei:
                store.truncate_logs(below)
            assert ei.value.hresult == E_INVALIDARG
            assert f"{below:08X}" in ei.value.message and "checkpoint" in ei.value.message
        assert sorted(list_generations(store.log_dir)) == before  # nothing deleted
        assert store.truncate_logs(4) == [1, 2, 3]
        assert sorted(list_generations(store.log_dir)) == [4, 5, 6]
        assert [g.generation for g in store.generations()] == [4, 5, 6]
    finally:
        abandon(store)  # no checkpoint: recovery starts in generation 4
    with Store.open(tmp_home) as store:
        assert request_ids(store) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ snapshots


def test_snapshot_is_consistent_while_another_thread_commits(tmp_home: Path, tmp_path: Path) -> None:
    total = 300
    store = Store.create(tmp_home, "t", StoreOptions(log_size=8192, checkpoint_records=0))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for rid in range(1, total + 1):
                commit_request(store, rid, nattrs=3)  # LSN == rid
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    snaps = []
    i = 0
    while t.is_alive() or i == 0:
        snaps.append(store.snapshot(tmp_path / f"snap{i}.db"))
        i += 1
    t.join(60)
    assert not t.is_alive() and not errors
    assert len(snaps) >= 1
    for snap in snaps:
        d = dump_db(snap.path)
        lsn = d["applied_lsn"]
        assert snap.lsn == lsn
        assert [r[0] for r in d["request"]] == list(range(1, lsn + 1))  # exactly the first lsn transactions
        assert len(d["attribute"]) == 3 * lsn  # none half applied
    # The last snapshot plus the logs from its generation reproduce the final state (hard recovery).
    last = snaps[-1]
    closed = store.roll_log()
    final = dump_db_live(store)
    rep = hard_recover(last.path, store.log_dir, last.generation, closed)
    assert rep.to_lsn == total and rep.replayed == total - last.lsn
    recovered = dump_db(last.path)
    assert recovered["request"] == final["request"] and recovered["attribute"] == final["attribute"]
    store.close()


def dump_db_live(store: Store) -> dict[str, list[tuple[object, ...]]]:
    return {
        "request": sorted(tuple(r.values()) for r in store.select("request")),
        "attribute": sorted(tuple(r.values()) for r in store.select("attribute")),
    }


# ------------------------------------------------------------------ hard recovery


def test_hard_recover_until_lsn_and_until_time(tmp_home: Path, tmp_path: Path) -> None:
    store = Store.create(tmp_home, "t", StoreOptions(log_size=1024, checkpoint_records=0))
    base = store.snapshot(tmp_path / "base.db")
    for rid in range(1, 11):
        commit_request(store, rid)
    time.sleep(0.002)
    middle_us = logfile.now_us()  # every record up to here has a time <= middle_us
    time.sleep(0.002)
    for rid in range(11, 21):
        commit_request(store, rid)
    high = store.roll_log()
    store.close()
    backup = tmp_path / "logs"
    shutil.copytree(tmp_home / "logs", backup)
    assert high >= 3  # several generations are replayed

    def recovered(**kw: int) -> tuple[list[int], int, str | None]:
        db = tmp_path / "restore.db"
        shutil.copyfile(base.path, db)
        rep = hard_recover(db, backup, base.generation, high, **kw)
        d = dump_db(db)
        assert d["applied_lsn"] == rep.to_lsn
        assert len(d["attribute"]) == 2 * len(d["request"])
        return [r[0] for r in d["request"]], rep.to_lsn, rep.stopped_at

    assert recovered() == (list(range(1, 21)), 20, None)
    ids, lsn, stopped = recovered(until_lsn=15)
    assert ids == list(range(1, 16)) and lsn == 15 and stopped is not None and "LSN 16" in stopped
    ids, lsn, stopped = recovered(until_us=middle_us)
    assert ids == list(range(1, 11)) and lsn == 10 and stopped is not None and "LSN 11" in stopped
    ids, lsn, _ = recovered(until_lsn=0)
    assert ids == [] and lsn == 0

    # A hole in gen_low..gen_high refuses before anything is applied.
    (backup / log_name(2)).unlink()
    db = tmp_path / "restore.db"
    shutil.copyfile(base.path, db)
    with pytest.raises(CorruptData) as ei:
        hard_recover(db, backup, base.generation, high)
    assert ei.value.hresult == JET_ERR_MISSING_RESTORE_LOG_FILES and ei.value.function == log_name(2)
    assert dump_db(db)["applied_lsn"] == 0 and dump_db(db)["request"] == []


def test_hard_recover_batch_failing_in_sqlite_is_rolled_back(tmp_home: Path, tmp_path: Path) -> None:
    """Hard recovery writes without syncs and with an in-memory journal: a failing batch still rolls back."""
    store = Store.create(tmp_home, "t", StoreOptions(checkpoint_records=0))
    base = store.snapshot(tmp_path / "base.db")
    for rid in range(1, 6):
        commit_request(store, rid)
    with store.transaction() as tx:
        tx.put("setting", {"name": "s", "value": "v"})
    for rid in range(6, 9):
        commit_request(store, rid)
    high = store.roll_log()
    store.close()
    db = tmp_path / "restore.db"
    shutil.copyfile(base.path, db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE setting")  # LSN 6 cannot be applied to this file
    conn.commit()
    conn.close()
    before = dump_db(db)
    with pytest.raises(CorruptData) as ei:
        hard_recover(db, tmp_home / "logs", base.generation, high)
    assert ei.value.hresult == JET_ERR_DATABASE_CORRUPTED and "setting" in ei.value.message
    assert dump_db(db) == before  # LSN 1..5 shared the failed batch: nothing of it stayed
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert not db.with_name(db.name + "-journal").exists()


# ------------------------------------------------------------------ circular logging, reopen


def test_circular_logging_deletes_old_generations(tmp_home: Path) -> None:
    opts = StoreOptions(log_size=2048, checkpoint_records=5, circular_logging=True)
    store = Store.create(tmp_home, "t", opts)
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for rid in range(first, first + 40):
                commit_request(store, rid, payload=bytes(100))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(1 + 40 * i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert store.current_generation > 10  # many rolls happened
    cp = store.checkpoint()
    gens = sorted(list_generations(store.log_dir))
    assert gens[0] == cp.generation and 1 not in gens  # everything below the checkpoint is gone
    assert gens == list(range(gens[0], store.current_generation + 1))
    store.close()
    with Store.open(tmp_home, opts) as store:
        assert request_ids(store) == list(range(1, 161))
        assert len(store.select("attribute")) == 320


def test_clean_close_then_reopen_replays_nothing(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t", StoreOptions(log_size=2048, checkpoint_records=0))
    for rid in range(1, 31):
        commit_request(store, rid)
    lsn = store.applied_lsn
    store.close()
    with Store.open(tmp_home) as store:
        rep = store.recovery
        assert rep.replayed == 0 and rep.torn_tail is None and rep.clean
        assert "nothing to replay" in rep.summary()
        assert store.applied_lsn == lsn == 30
        assert store.last_checkpoint is not None and store.last_checkpoint.lsn == lsn
        assert request_ids(store) == list(range(1, 31))


def test_concurrent_commits_across_rolls(tmp_home: Path) -> None:
    """Group-commit syncers run outside the write lock while another thread rolls the generation.

    Regression: the roll closed the descriptor (fd -1) before opening the next generation, so a
    concurrent fdatasync failed, the store marked the record durable anyway and every later committer
    waited forever for it to be applied.
    """
    store = Store.create(tmp_home, "t", StoreOptions(log_size=2048, checkpoint_records=0))
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for rid in range(first, first + 40):
                commit_request(store, rid, payload=bytes(150))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(1 + 40 * i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "committers hung"
    assert not errors, errors[0]
    assert store.current_generation > 20
    assert store.applied_lsn == 320
    store.close()
    with Store.open(tmp_home) as store:
        assert request_ids(store) == list(range(1, 321))
        assert store.integrity_check() == "ok"


def test_group_commit_read_your_writes_with_concurrent_checkpoints(tmp_home: Path, tmp_path: Path) -> None:
    """Every commit is visible to its own thread when it returns, LSNs are unique and contiguous, and
    checkpoints/snapshots running meanwhile never collide with a batch on the writer connection."""
    store = Store.create(tmp_home, "t", StoreOptions(log_size=4096, checkpoint_records=25))
    errors: list[BaseException] = []
    lsns: list[int] = []
    stop = threading.Event()

    def work(first: int) -> None:
        try:
            for rid in range(first, first + 60):
                with store.transaction() as tx:
                    tx.put("request", {"request_id": rid, "disposition_message": f"tx{rid}"})
                    tx.put("attribute", {"request_id": rid, "name": "n", "value": str(rid)})
                assert tx.lsn is not None
                lsns.append(tx.lsn)
                row = store.get("request", rid)  # read-your-writes as soon as commit returns
                assert row is not None and row["disposition_message"] == f"tx{rid}"
                assert store.applied_lsn >= tx.lsn
        except BaseException as e:
            errors.append(e)

    def maintenance() -> None:
        i = 0
        try:
            while not stop.is_set():
                store.checkpoint()
                snap = store.snapshot(tmp_path / f"s{i % 2}.db")
                d = dump_db(snap.path)
                assert len(d["attribute"]) == len(d["request"])  # snapshots hold whole transactions
                i += 1
        except BaseException as e:
            errors.append(e)

    m = threading.Thread(target=maintenance, daemon=True)
    m.start()
    threads = [threading.Thread(target=work, args=(1 + 60 * i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    m.join(60)
    assert not any(t.is_alive() for t in [*threads, m]), "hung"
    assert not errors, errors[0]
    assert sorted(lsns) == list(range(1, 481))
    assert store.count("request") == 480 and store.count("attribute") == 480
    store.close()
    with Store.open(tmp_home) as store:
        assert store.recovery.replayed == 0
        assert store.count("request") == 480 and store.integrity_check() == "ok"
