"""Equivalence (issue 12 "Must show"): one scripted sequence of CA operations on SQLite and on PostgreSQL
gives byte-identical log payloads and equal table dumps; pg_dump, an independent reader, agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from pg_support import PgCluster
from pycertsrv.ca.authority import Authority
from pycertsrv.store.postgres import PgStore

from .ca_script import deterministic, make_csrs, point_at, run, twin_home
from .pg_dumps import pg_dump, pg_payloads, sqlite_dump, sqlite_payloads


def test_same_ca_operations_give_identical_log_payloads_and_tables(pg_cluster: PgCluster, pg_url: str,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    csrs = make_csrs(9)
    lite_home, pg_home = tmp_path / "lite", tmp_path / "pg"
    deterministic(monkeypatch)
    a = Authority.init(lite_home, "Equivalence CA", key_type="rsa-2048", policy={"mode": "pending"})
    identity = a.store.identity
    lineage = a.store.get("setting", "archive_lineage")
    assert lineage is not None
    a.close()
    twin_home(lite_home, pg_home)
    point_at(pg_home, pg_url)  # the same CA, its database on PostgreSQL
    PgStore.create(pg_url, "Equivalence CA", identity=identity, lineage=lineage["value"], home=pg_home).close()

    deterministic(monkeypatch)
    with Authority.open(lite_home) as a:
        lite_result = run(a, csrs)
        db_path = a.store.db_path
    deterministic(monkeypatch)
    with Authority.open(pg_home) as b:
        assert isinstance(b.store, PgStore)
        pg_result = run(b, csrs)

    assert lite_result == pg_result
    lite_payloads = sqlite_payloads(lite_home / "logs")
    # 9 submits, 6 issues, 2 denials, 1 resubmit, 3 revocations, 1 unrevoke, 2 CRLs: one record each
    assert [n for n, _ in lite_payloads] == list(range(1, 25))
    assert pg_payloads(pg_url) == lite_payloads  # byte-identical, record by record
    lite_tables = sqlite_dump(db_path)
    assert lite_tables["request"] and lite_tables["crl"] and len(lite_tables["crl"]) == 2
    assert pg_dump(pg_url) == lite_tables
    # pg_dump (PostgreSQL's own tool) reads the same certificates and CRLs back.
    out = pg_cluster.tool("pg_dump", "--data-only", "--table=request", "--table=crl",
                          pg_url.split("?")[0].rsplit("/", 1)[1]).stdout.decode()
    for row in lite_tables["request"]:
        if row[11] is not None:  # raw_cert, bytea in hex as pg_dump writes it
            assert "\\\\x" + row[11].hex() in out
    for row in lite_tables["crl"]:
        assert "\\\\x" + row[3].hex() in out
