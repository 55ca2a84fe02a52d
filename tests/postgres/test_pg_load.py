"""Hard recovery into PostgreSQL, and PostgreSQL exports restored onto SQLite (engine level, issue 12)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from pg_support import PgCluster
from pycertsrv.errors import CertSrvError
from pycertsrv.store import Store, hard_recover, logfile
from pycertsrv.store.interface import Until
from pycertsrv.store.postgres import PgStore
from pycertsrv.store.postgres.load import FileStream, PgRecoveryTarget, restore_into

from .pg_dumps import pg_dump, pg_payloads, sqlite_dump


def _write(store: Store | PgStore, first: int, n: int) -> None:
    for i in range(first, first + n):
        with store.transaction() as tx:
            tx.put("request", {"request_id": i, "disposition": 20, "serial": f"{i:040X}", "raw_cert": b"\x30" * i})


def test_pg_snapshot_and_generations_restore_onto_sqlite_and_onto_pg(pg_cluster: PgCluster, pg_url: str,
                                                                     tmp_path: Path) -> None:
    pg = PgStore.create(pg_url, "CA")
    try:
        _write(pg, 1, 10)
        snap = pg.snapshot(tmp_path / "set.db")
        _write(pg, 11, 10)
        pg.roll()
        _write(pg, 21, 5)
        pg.roll()
        logs = tmp_path / "logs"
        logs.mkdir()
        for g in pg.generations():
            if g.closed:
                pg.export_generation(g.generation, logs)
        lsns_before = pg_payloads(pg_url)
    finally:
        pg.close()
    gens = sorted(logfile.list_generations(logs))
    # onto SQLite with the SQLite engine's own hard recovery: the exported files are its format
    lite_db = tmp_path / "lite.db"
    shutil.copy(snap.path, lite_db)
    rep = hard_recover(lite_db, logs, snap.generation, gens[-1])
    assert rep.to_lsn == 25
    want = pg_dump(pg_url)
    assert sqlite_dump(lite_db) == {**want, "_meta": sqlite_dump(lite_db)["_meta"]}
    # onto a second PostgreSQL database
    other = pg_cluster.new_database()
    try:
        rep2 = restore_into(other, snap.path, [logs / logfile.log_name(g) for g in gens if g >= snap.generation])
        assert rep2.to_lsn == 25
        assert pg_dump(other) == want
        assert pg_payloads(other) == lsns_before[snap.generation - 1:] or pg_payloads(other)[-1] == lsns_before[-1]
        with PgStore.open(other) as again:  # it serves and goes on from LSN 26
            assert again.integrity_check() == "ok"
            _write(again, 26, 1)
            assert again.log_position[2] == 26
        # --until: a second restore over it (force) stops at LSN 15
        rep3 = restore_into(other, snap.path, [logs / logfile.log_name(g) for g in gens if g >= snap.generation],
                            force=True, until=Until(lsn=15))
        assert rep3.to_lsn == 15
        with psycopg.connect(other) as c:
            assert c.execute("SELECT max(request_id) FROM request").fetchone()[0] == 15
    finally:
        pg_cluster.drop_database(other)


def test_sqlite_set_restores_into_pg(pg_url: str, tmp_path: Path) -> None:
    lite = Store.create(tmp_path / "home", "CA")
    try:
        _write(lite, 1, 7)
        snap = lite.snapshot(tmp_path / "set.db")
        _write(lite, 8, 7)
        lite.roll_log()
        gens = [lite.log_dir / logfile.log_name(g.generation) for g in lite.generations()
                if g.closed and g.generation >= snap.generation]
        rep = restore_into(pg_url, snap.path, gens)
        assert rep.to_lsn == 14
        assert pg_dump(pg_url) == {**sqlite_dump(lite.db_path), "_meta": pg_dump(pg_url)["_meta"]}
    finally:
        lite.close()


def test_a_failed_restore_leaves_the_target_as_it_was(pg_url: str, tmp_path: Path) -> None:
    lite = Store.create(tmp_path / "home", "CA")
    try:
        _write(lite, 1, 3)
        snap = lite.snapshot(tmp_path / "set.db")
        _write(lite, 4, 3)
        lite.roll_log()
        gen = lite.log_dir / logfile.log_name(next(g.generation for g in lite.generations() if g.closed))
    finally:
        lite.close()
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray(gen.read_bytes())
    rec5 = next(r for r in logfile.scan(gen, None, keep=True)[1] if r.lsn == 5)
    data[rec5.offset + logfile.REC_SIZE + 2] ^= 0xFF  # a flipped bit in a record the restore needs (not a tail)
    (bad / gen.name).write_bytes(bytes(data))
    target = PgRecoveryTarget(pg_url)
    target.load_snapshot(FileStream(snap.path))
    with pytest.raises(CertSrvError):
        target.replay([FileStream(bad / gen.name)])
    with psycopg.connect(pg_url) as c:  # nothing was committed: not even the schema
        assert c.execute("SELECT to_regclass('log_record')").fetchone()[0] is None


def test_a_gap_or_a_foreign_generation_is_refused_and_nothing_is_restored(pg_url: str, tmp_path: Path) -> None:
    lite = Store.create(tmp_path / "home", "CA")
    other = Store.create(tmp_path / "other", "Other CA")
    try:
        snap = lite.snapshot(tmp_path / "set.db")
        for _ in range(3):
            _write(lite, lite.log_position[2] + 1, 2)
            lite.roll_log()
        _write(other, 1, 2)
        other.roll_log()
        gens = [lite.log_dir / logfile.log_name(g.generation) for g in lite.generations() if g.closed]
        foreign = other.log_dir / logfile.log_name(1)
    finally:
        lite.close()
        other.close()
    for files, words in (([gens[0], gens[2]], "missing"), ([foreign], "not")):
        target = PgRecoveryTarget(pg_url)
        target.load_snapshot(FileStream(snap.path))
        with pytest.raises(CertSrvError) as e:
            target.replay([FileStream(p) for p in files])
        assert words in str(e.value)
        with psycopg.connect(pg_url) as c:  # rolled back: not even the schema is there
            assert c.execute("SELECT to_regclass('log_record')").fetchone()[0] is None
