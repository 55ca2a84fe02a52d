"""Continuous archiving (issue 13) of a PostgreSQL CA: the shipper ships the generations the database holds,
byte-identical to their exported ``edb`` files; the watermark is in the database; truncation keeps what is
not yet archived."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.store import StoreOptions, archivemark, logfile
from pycertsrv.store.postgres import PgStore
from support import commit_requests, ship_generations


def test_shipper_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    home, dest = tmp_path / "h", tmp_path / "arch"
    (home / "system").mkdir(parents=True)
    store = PgStore.create(pg_url, "Archived PG CA", StoreOptions(archiving=True), home=home)
    try:
        sh, ldir = ship_generations(store, home, dest)
        out = tmp_path / "exported"
        out.mkdir()
        for g, p in logfile.list_generations(ldir).items():
            assert p.read_bytes() == store.export_generation(g, out).read_bytes()
        commit_requests(store, 1)
        store.roll_log()  # generation 4: closed, not shipped
        deleted = store.truncate_logs(store.checkpoint().generation)
        assert sorted(deleted) == [1, 2, 3]
        assert [g.generation for g in store.generations()] == [4, 5]  # 4 waits for the archive
        sh.step()
        assert archivemark.read_marks(store).watermark >= 4
    finally:
        store.close()
