"""A failed apply (SQLite full) degrades the store instead of wedging it: the committed records stay
in the redo log, reads go on, writes are refused cleanly, and a retry applies them without a restart.

SQLite is made full for real with ``PRAGMA max_page_count`` on the writer's connection (SQLite then
answers SQLITE_FULL "database or disk is full" exactly as on a full disk); the service-level test in
tests/service/test_store_faults.py fills a real tmpfs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import commit_request, dump_db

from pycertsrv.errors import ERROR_DISK_FULL, StorageError
from pycertsrv.store import Store, StoreOptions, list_generations, logfile
from pycertsrv.store.health import COMMIT_NOTES, DEGRADED_DISK_FULL, OK, commit_scope
from support import mounts

OPTS = StoreOptions(log_size=1 << 20, checkpoint_records=0, retry_interval=0.05)
BIG = bytes(range(256)) * 64  # 16 KiB: needs new pages however much room the last ones have
CERT = b"\x30\x82cert-2" + BIG


def fill_sqlite(store: Store) -> None:
    """Let SQLite's writer grow by no page at all (the next commit that needs one fails SQLITE_FULL)."""
    w = store._writer
    assert w is not None
    w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = w.execute("PRAGMA page_count").fetchone()[0]
    w.execute(f"PRAGMA max_page_count = {pages}")


def free_sqlite(store: Store) -> None:
    assert store._writer is not None
    store._writer.execute("PRAGMA max_page_count = 1073741823")


def wait_health(store: Store, state: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while store.health().state != state:
        assert time.monotonic() < deadline, f"store stayed {store.health().summary!r}, wanted {state!r}"
        time.sleep(0.02)


def test_failed_apply_is_committed_not_applied_then_recovers(tmp_home: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pycertsrv.store")
    store = Store.create(tmp_home, "t", OPTS)
    try:
        commit_request(store, 1)
        fill_sqlite(store)
        with commit_scope() as notes:
            with store.transaction() as tx:
                tx.put("request", {"request_id": 2, "disposition": 20, "raw_cert": CERT})
                tx.put("attribute", {"request_id": 2, "name": "n", "value": "v"})
        # The writer is told the truth: committed (durable, it has its LSN), not yet applied.
        assert tx.applied is False and tx.lsn is not None and notes == {tx.lsn}
        assert COMMIT_NOTES.get() is None  # the scope ended
        h = store.health()
        assert h.state == DEGRADED_DISK_FULL and h.unapplied == 1 and h.unapplied_lsns == (tx.lsn, tx.lsn)
        assert "database or disk is full" in h.detail and "committed" in h.summary
        # Reads go on: by key the committed row is seen (with its certificate); lists are stale until applied.
        row = store.get("request", 2)
        assert row is not None and row["raw_cert"] == CERT
        assert [r["request_id"] for r in store.select("request")] == [1]
        # A new write is refused before anything is logged, with ERROR_DISK_FULL naming the state.
        log_path = list_generations(tmp_home / "logs")[1]
        before = log_path.read_bytes()
        with pytest.raises(StorageError) as ei:
            commit_request(store, 3)
        assert ei.value.hresult == ERROR_DISK_FULL and "degraded: disk full" in ei.value.message
        assert "nothing was written" in ei.value.message and "\n" not in str(ei.value)
        assert log_path.read_bytes() == before
        # Space comes back: the background retry applies LSN 2 from memory of the log, no restart.
        free_sqlite(store)
        wait_health(store, OK)
        assert [r["request_id"] for r in store.select("request")] == [1, 2]
        commit_request(store, 3)
        assert store.health().unapplied == 0
        records = [r for r in caplog.records if r.name == "pycertsrv.store"]
        assert any("degraded: disk full" in r.getMessage() and r.levelno == logging.WARNING for r in records)
        assert any("store recovered" in r.getMessage() and r.levelno == logging.INFO for r in records)
    finally:
        store.close()
    db = dump_db(next((tmp_home / "db").glob("*.db")))
    assert [r[0] for r in db["request"]] == [1, 2, 3]


def test_unapplied_records_survive_a_restart(tmp_home: Path) -> None:
    """Closed while degraded (no checkpoint of them): the next open replays them from the log."""
    store = Store.create(tmp_home, "t", OPTS)
    commit_request(store, 1)
    fill_sqlite(store)
    commit_request(store, 2, payload=BIG)
    assert store.health().state == DEGRADED_DISK_FULL
    store.close()
    with Store.open(tmp_home, OPTS) as again:
        assert again.recovery.replayed == 1
        assert [r["request_id"] for r in again.select("request")] == [1, 2]
        assert again.health().state == OK


def test_next_id_counts_unapplied_rows(tmp_home: Path) -> None:
    """Ids allocated while degraded never reuse the id of a committed, unapplied row."""
    store = Store.create(tmp_home, "t", OPTS)
    try:
        fill_sqlite(store)
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 9, "raw_request": BIG})
        assert store.health().state == DEGRADED_DISK_FULL
        store._ids.clear()  # as a fresh Authority would: recompute from the database
        free_sqlite(store)
        wait_health(store, OK)
        with store.transaction() as tx:
            assert tx.next_id("request") == rid + 1
    finally:
        store.close()


@pytest.fixture
def small_log_mount(tmp_home: Path) -> Iterator[Path]:
    """``tmp_home/logs`` on its own 512 KiB tmpfs: the log fills while the database has room."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    with mounts() as m:
        yield m.tmpfs(tmp_home / "logs", "512k", "1777")  # (a tmpfs's own default mode)


def test_full_log_refuses_the_write_cleanly(tmp_home: Path, small_log_mount: Path) -> None:
    """The log itself cannot take the record: nothing is durable, so the write is refused (ERROR_DISK_FULL)
    with no partial frame left, the store stays usable, and writes work again once the log has room."""
    opts = StoreOptions(log_size=64 << 10, checkpoint_records=0, retry_interval=0.05)
    store = Store.create(tmp_home, "t", opts)
    answered: list[int] = []
    refused: list[StorageError] = []
    try:
        for rid in range(1, 200):
            try:
                commit_request(store, rid, payload=BIG)
            except StorageError as e:
                refused.append(e)
                break
            answered.append(rid)
        assert refused and answered, "the log never filled"
        e = refused[0]
        assert e.hresult == ERROR_DISK_FULL and "nothing was written" in e.message and "\n" not in str(e)
        assert store.health().state == OK  # nothing committed is waiting: only this write was refused
        assert [r["request_id"] for r in store.select("request")] == answered
        for path in list_generations(small_log_mount).values():  # whole records only, no torn frame
            res, _ = logfile.scan(path, None)
            assert res.bad_offset is None, (path.name, res.bad_reason)
        # Room again (the oldest generations are not needed: the database holds them): writes go on.
        store.checkpoint()
        store.truncate_logs(store.current_generation)
        commit_request(store, answered[-1] + 1, payload=BIG)
        answered.append(answered[-1] + 1)
    finally:
        store.close()
    with Store.open(tmp_home, opts) as again:
        assert again.recovery.torn_tail is None
        assert [r["request_id"] for r in again.select("request")] == answered
