"""Continuous archiving (issue 13) of a PostgreSQL CA: the shipper ships the generations the database holds,
byte-identical to their exported ``edb`` files; the watermark is in the database; truncation keeps what is
not yet archived."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.shipper import Shipper
from pycertsrv.store import StoreOptions, archivemark, logfile
from pycertsrv.store.postgres import PgStore


def _commit(store: PgStore, n: int) -> None:
    for _ in range(n):
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 9, "requester": "t", "subject": f"CN=r{rid}"})


def test_shipper_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    home, dest = tmp_path / "h", tmp_path / "arch"
    (home / "system").mkdir(parents=True)
    store = PgStore.create(pg_url, "Archived PG CA", StoreOptions(archiving=True), home=home)
    try:
        sh = Shipper(store, ArchiveSection(dest=str(dest), timeout=3600), home)  # type: ignore[arg-type]
        for _ in range(3):
            _commit(store, 2)
            store.roll_log()
        sh.step()
        marks = archivemark.read_marks(store)
        assert marks.watermark == 3 and marks.lineage is not None
        ldir = dest / store.identity / marks.lineage
        assert sorted(logfile.list_generations(ldir)) == [1, 2, 3]
        out = tmp_path / "exported"
        out.mkdir()
        for g, p in logfile.list_generations(ldir).items():
            assert p.read_bytes() == store.export_generation(g, out).read_bytes()
        _commit(store, 1)
        store.roll_log()  # generation 4: closed, not shipped
        deleted = store.truncate_logs(store.checkpoint().generation)
        assert sorted(deleted) == [1, 2, 3]
        assert [g.generation for g in store.generations()] == [4, 5]  # 4 waits for the archive
        sh.step()
        assert archivemark.read_marks(store).watermark >= 4
    finally:
        store.close()
