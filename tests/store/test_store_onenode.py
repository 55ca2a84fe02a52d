"""A SQLite store answers the several-nodes calls (issue 14) as the CA's only node: always the writer."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.store import Store
from pycertsrv.store.postgres.lease import holder_name


def test_a_sqlite_store_is_always_the_writer_at_epoch_0_without_replication(tmp_path: Path) -> None:
    with Store.create(tmp_path / "home", "Lone CA") as s:
        seen: list[str] = []
        s.on_role_change(seen.append)
        s.advertise(["unix:/run/certsrv.sock"])
        assert (s.role, s.epoch, s.try_promote()) == ("writer", 0, True)
        assert s.writer_info()["holder"] == holder_name() and s.writer_info()["epoch"] == 0
        with s.transaction() as tx:
            tx.put("setting", {"name": "a", "value": "1"})
        s.roll_log()
        assert [g.epoch for g in s.generations()] == [0, 0]  # no lease: every generation is epoch 0
        r = s.replication()
        assert r["mode"] == "none" and r["standbys"] == [] and "nothing replicates it" in str(r["warning"])
        assert seen == []
