"""The PostgreSQL engine on a real server: group commit, gapless LSNs, fencing, exports (issue 12)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pycertsrv.errors import CertSrvError, Conflict, NotWriter
from pycertsrv.store import Store, StoreOptions, logfile
from pycertsrv.store.postgres import PgStore

from .pg_dumps import pg_dump, pg_payloads, sqlite_dump, sqlite_payloads


def _ops(i: int) -> list[tuple[str, dict[str, object]]]:
    return [("request", {"request_id": i, "disposition": 20, "serial": f"{i:040X}", "raw_cert": bytes([i % 256]) * 50,
                         "subject": f"CN=host{i}", "submitted_at": "2026-11-29T10:00:00Z"}),
            ("attribute", {"request_id": i, "name": "ccm", "value": f"host{i}.example"})]


def test_commits_are_gapless_and_applied_in_one_transaction(pg_url: str) -> None:
    store = PgStore.create(pg_url, "Test CA", StoreOptions(log_size=4096))
    try:
        errors: list[BaseException] = []

        def worker(base: int) -> None:
            try:
                for i in range(base, base + 40):
                    with store.transaction() as tx:
                        for table, row in _ops(i):
                            tx.put(table, row)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(1 + 40 * k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        store.roll_log()
        gens = store.generations()
    finally:
        store.close()
    with psycopg.connect(pg_url) as c:
        lsns = [r[0] for r in c.execute("SELECT lsn FROM log_record ORDER BY lsn")]
        assert lsns == list(range(1, 241))  # gapless, no duplicate
        assert c.execute("SELECT count(*) FROM request").fetchone()[0] == 240
        assert c.execute("SELECT value FROM _meta WHERE key='applied_lsn'").fetchone()[0] == "240"
    assert len(gens) > 2 and all(g.closed for g in gens[:-1]) and not gens[-1].closed  # rolled on size
    for a, b in itertools.pairwise(gens):
        assert b.first_lsn == a.last_lsn + 1
    # Reopened: counters come from the database.
    with PgStore.open(pg_url) as again:
        assert again.log_position[2] == 240
        with again.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 9})
        assert rid == 241 and tx.lsn == 241


def test_second_writer_is_refused_and_a_takeover_fences_the_first(pg_url: str) -> None:
    first = PgStore.create(pg_url, "Test CA")
    try:
        with pytest.raises(Conflict) as refused:
            PgStore.open(pg_url)
        assert "another writer holds" in refused.value.message
        with first.transaction() as tx:
            tx.put("setting", {"name": "a", "value": "1"})
        second = PgStore.open(pg_url, takeover=True)
        try:
            with pytest.raises(NotWriter) as fenced:  # issue 14: a fenced writer is a standby
                with first.transaction() as tx:
                    tx.put("setting", {"name": "b", "value": "from the old writer"})
            assert fenced.value.writer["epoch"] == second.epoch and first.role == "standby"
            with pytest.raises(NotWriter):  # and it stays refused
                first.transaction()
            with second.transaction() as tx:
                tx.put("setting", {"name": "c", "value": "2"})
            assert tx.lsn == 2  # the fenced record's LSN was never committed: no gap
        finally:
            second.close()
    finally:
        first.close()
    with psycopg.connect(pg_url) as c:
        assert [r[0] for r in c.execute("SELECT lsn FROM log_record ORDER BY lsn")] == [1, 2]
        assert c.execute("SELECT count(*) FROM setting WHERE name = 'b'").fetchone()[0] == 0


def test_the_database_refuses_a_commit_with_a_superseded_epoch(pg_url: str) -> None:
    """Fencing is the database's check, not the process's: raise the epoch behind the writer's back."""
    store = PgStore.create(pg_url, "Test CA")
    try:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("UPDATE writer_lease SET epoch = epoch + 1, holder = 'elsewhere:1'")
        with pytest.raises(NotWriter) as e:
            with store.transaction() as tx:
                tx.put("setting", {"name": "x", "value": "y"})
        assert e.value.hresult == 0x80071397 and e.value.writer["holder"] == "elsewhere:1"
        assert store.role == "standby"
    finally:
        store.close()
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM log_record").fetchone()[0] == 0


def test_the_fencing_trigger_refuses_log_rows_of_any_writer_but_the_lease_holder(pg_url: str) -> None:
    """Even SQL that skips the lease check cannot add to the log under a stale or no epoch."""
    PgStore.create(pg_url, "Test CA").close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        epoch = c.execute("SELECT epoch FROM writer_lease").fetchone()[0]
        row = "INSERT INTO log_record VALUES (1, 1, 0, 0, '\\x00')"
        for declared in (None, str(epoch - 1)):
            with pytest.raises(psycopg.errors.RaiseException, match="fenced"), c.transaction():
                if declared is not None:
                    c.execute("SELECT set_config('certsrv.epoch', %s, true)", (declared,))
                c.execute(row)
        with c.transaction():  # the holder's epoch passes
            c.execute("SELECT set_config('certsrv.epoch', %s, true)", (str(epoch),))
            c.execute(row)
        assert c.execute("SELECT count(*) FROM log_record").fetchone()[0] == 1


def test_same_transactions_give_identical_payloads_snapshot_and_generations(pg_url: str, tmp_path: Path) -> None:
    """Engine-level equivalence: the same row images through both engines."""
    lite = Store.create(tmp_path / "home", "Test CA")
    lineage = lite.get("setting", "archive_lineage")
    assert lineage is not None
    pg = PgStore.create(pg_url, "Test CA", identity=lite.identity, lineage=lineage["value"])
    try:
        for s in (lite, pg):
            for i in range(1, 30):
                with s.transaction() as tx:
                    for table, row in _ops(i):
                        tx.put(table, row)
                if i % 10 == 0:
                    s.roll_log()
            with s.transaction() as tx:
                tx.delete("attribute", (3, "ccm"))
        assert pg_payloads(pg_url) == sqlite_payloads(lite.log_dir)
        snap = pg.snapshot(tmp_path / "pg.db")
        lite_snap = lite.snapshot(tmp_path / "lite.db")
        assert snap.lsn == lite_snap.lsn == 30
        assert sqlite_dump(snap.path) == sqlite_dump(lite_snap.path) == pg_dump(pg_url)
        out = tmp_path / "exported"
        out.mkdir()
        for g in pg.generations():
            if g.closed:
                p = pg.export_generation(g.generation, out)
                lite_records = logfile.scan(lite.log_dir / p.name, None, keep=True)[1]
                pg_records = logfile.scan(p, bytes.fromhex(lite.identity), keep=True)[1]
                assert [(r.lsn, r.payload) for r in pg_records] == [(r.lsn, r.payload) for r in lite_records]
        assert pg.integrity_check() == "ok"
    finally:
        lite.close()
        pg.close()


def test_open_refuses_a_database_without_the_schema(pg_url: str) -> None:
    with pytest.raises(CertSrvError) as e:
        PgStore.open(pg_url)
    assert e.value.hresult == 0x8007139F and "certsrv init" in e.value.message


def test_an_idle_writer_keeps_its_lease_and_learns_it_was_fenced(pg_url: str) -> None:
    store = PgStore.create(pg_url, "Test CA", lease_ttl=0.6)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the heartbeat keeps a writer with nothing to commit alive
            time.sleep(0.2)
        with pytest.raises(Conflict):
            PgStore.open(pg_url, lease_ttl=0.6)
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("UPDATE writer_lease SET epoch = epoch + 1, holder = 'elsewhere:1'")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                store.transaction()
            except NotWriter as e:
                assert e.writer["holder"] == "elsewhere:1" and store.role == "standby"
                break
            time.sleep(0.05)
        else:
            pytest.fail("the heartbeat never noticed the superseded epoch")
    finally:
        store.close()


def test_a_killed_writer_s_lease_expires_and_a_new_writer_takes_over(pg_url: str) -> None:
    PgStore.create(pg_url, "Test CA").close()
    code = ("import sys, os, signal; from pycertsrv.store.postgres import PgStore\n"
            f"s = PgStore.open({pg_url!r}, lease_ttl=1.0)\n"
            "with s.transaction() as tx: tx.put('setting', {'name': 'k', 'value': 'v'})\n"
            "print('ready', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "ready" in proc.stdout, proc.stderr
    # On this host the dead holder is seen at once: a restarted writer takes over without waiting.
    with PgStore.open(pg_url, lease_ttl=1.0) as restarted:
        assert restarted.lease is not None and restarted.lease.epoch == 3
    # A holder on another host can only expire: pretend the dead writer ran elsewhere.
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE writer_lease SET holder = 'otherhost:4242', renewed_us = %s",
                  (time.time_ns() // 1000,))
    with pytest.raises(Conflict):
        PgStore.open(pg_url, lease_ttl=60.0)
    deadline = time.monotonic() + 30
    while True:
        try:
            store = PgStore.open(pg_url, lease_ttl=1.0)
            break
        except Conflict:
            assert time.monotonic() < deadline, "the dead writer's lease never expired"
            time.sleep(0.2)
    try:
        assert store.lease is not None and store.lease.epoch == 4  # create, the killed writer, restarted, us
        with store.transaction() as tx:
            tx.put("setting", {"name": "k2", "value": "v2"})
        assert tx.lsn == 2
    finally:
        store.close()
