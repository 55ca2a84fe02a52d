"""The replication pair of tests/pg_support.py itself (issue 14): two clusters on two ports, the standby
streaming synchronously, a commit on the primary visible on the standby; promotion after an immediate stop;
the multi-host URL follows the promoted standby."""

from __future__ import annotations

import psycopg
import pytest

from pg_support import STANDBY_NAME, PgPair, pair_context, promote, stop_immediate
from pycertsrv.config import StoreSection


def test_pair_streams_synchronously(pair: PgPair) -> None:
    assert pair.primary.port != pair.standby.port
    assert (STANDBY_NAME, "streaming", "sync") in pair.replication()
    url = pair.new_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(pair.primary.url(name), autocommit=True) as c:
        c.execute("CREATE TABLE t (v text)")
        c.execute("INSERT INTO t VALUES ('acknowledged')")
        assert c.execute("SHOW synchronous_commit").fetchone() == ("remote_apply",)
    # remote_apply: the commit returned only once the standby had applied it; read it there at once.
    with psycopg.connect(pair.standby.url(name), autocommit=True) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert c.execute("SELECT v FROM t").fetchall() == [("acknowledged",)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("INSERT INTO t VALUES ('on a standby')")


def test_multi_host_url_is_a_valid_store_url(pair: PgPair) -> None:
    url = pair.url("db")
    assert "target_session_attrs=read-write" in url and url.count(",") == 2
    assert StoreSection(url=url).url == url  # the config validator takes it as it is


def test_async_pair_is_not_synchronous() -> None:
    with pair_context(sync=None) as p:
        states = p.replication()
        assert [(a, s) for a, s, _ in states] == [(STANDBY_NAME, "streaming")]
        assert states[0][2] == "async"


def test_promote_after_immediate_stop_keeps_acknowledged_rows() -> None:
    with pair_context(sync="on") as p:
        url = p.new_database()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE TABLE t (n int)")
            for n in range(50):
                c.execute("INSERT INTO t VALUES (%s)", (n,))  # each acknowledged: flushed on both
        stop_immediate(p.primary)
        assert p.primary.proc.poll() is not None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)  # the standby is read-only: no read-write host left
        promote(p.standby)
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:  # lands on the promoted standby
            assert c.info.port == p.standby.port
            assert c.execute("SELECT count(*), max(n) FROM t").fetchone() == (50, 49)
            c.execute("INSERT INTO t VALUES (50)")  # writable; no longer waits for a synchronous partner
