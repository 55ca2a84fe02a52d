"""The store across a PostgreSQL failover (issue 14), on a real primary + synchronous streaming standby
(tests/pg_support.py): the primary stopped ``-m immediate``, the standby promoted, the store reconnects
through the multi-host URL, re-takes its own lease and goes on; every commit that returned is on the new
primary; the commit in flight raised OutcomeUnknown; one refused as not sent (RPC_S_CALL_FAILED_DNE) is not
there. Also ``replication()`` on a synchronous pair, an asynchronous one and a lone server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pg_support import PgPair, pair_context, promote, stop_immediate
from pycertsrv.errors import RPC_S_CALL_FAILED_DNE, CertSrvError, OutcomeUnknown
from pycertsrv.store.postgres import PgStore

TTL = 2.0
SLOW_TRIALS = 20


def _dbname(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[1]


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        return list(c.execute(query).fetchall())


def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _put(store: PgStore, name: str) -> int:
    with store.transaction() as tx:
        tx.put("setting", {"name": name, "value": "acknowledged"})
    assert tx.lsn is not None
    return tx.lsn


def _names(url: str) -> set[str]:
    return {str(r[0]) for r in _rows(url, "SELECT name FROM setting")}


def _gapless(url: str) -> None:
    lsns = [int(str(r[0])) for r in _rows(url, "SELECT lsn FROM log_record ORDER BY lsn")]
    assert lsns == list(range(1, len(lsns) + 1))


@pytest.fixture
def pair() -> Iterator[PgPair]:
    with pair_context(sync="remote_apply") as p:
        yield p


def test_primary_lost_in_flight_commit_is_outcome_unknown_and_the_store_goes_on(pair: PgPair) -> None:
    url = pair.new_database("fo")
    name = _dbname(url)
    store = PgStore.create(url, "Failover CA", lease_ttl=TTL)
    try:
        epoch = store.epoch
        acked = {f"before-{i}" for i in range(5)}
        for n in sorted(acked):
            _put(store, n)
        # Hold the next commit in flight: another session locks the row every commit updates.
        blocker = psycopg.connect(pair.primary.url(name))
        blocker.execute("SELECT value FROM _meta WHERE key = 'applied_lsn' FOR UPDATE")
        outcome: list[BaseException] = []

        def in_flight() -> None:
            try:
                _put(store, "in-flight")
            except BaseException as e:  # the assertion below names what it was
                outcome.append(e)

        t = threading.Thread(target=in_flight)
        t.start()
        _until("the commit to wait on the lock", lambda: _rows(
            pair.primary.url(name), "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0] == 1)
        stop_immediate(pair.primary)
        t.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown), outcome
        e = outcome[0]
        assert e.hresult == 0x800706BE and str(e).startswith(f"{store.subject}: 0x800706BE RPC_S_CALL_FAILED: ")
        assert "may or may not have been written" in e.message and "same request key" in e.message
        blocker.close()
        promote(pair.standby)
        for i in range(5):  # the first of these waits inside for the reconnection
            _put(store, f"after-{i}")
            acked.add(f"after-{i}")
        assert store.role == "writer" and store.epoch == epoch + 1  # its own lease, re-taken
        assert store.generations()[-1].epoch == store.epoch
        got = store.get("setting", "after-4")  # reads reconnected too
        assert got is not None and got["value"] == "acknowledged"
        assert store.health().state == "ok"
    finally:
        store.close()
    new_primary = pair.standby.url(name)
    present = _names(new_primary)
    assert acked <= present, f"acknowledged commits lost: {sorted(acked - present)}"
    assert "in-flight" not in present  # it never reached COMMIT (it waited on the lock)
    _gapless(new_primary)


def _failover_under_load(pair: PgPair) -> None:
    """Four writers issue request rows (ids from next_id, as the CA does) through a failover; every answered
    one must be on the promoted standby under its id, unchanged (a reused id would overwrite it)."""
    url = pair.new_database("load")
    store = PgStore.create(url, "Failover CA", lease_ttl=TTL)
    acked: dict[int, str] = {}
    unknown: set[str] = set()
    not_sent: set[str] = set()
    other: list[CertSrvError] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(k: int) -> None:
        i = 0
        while not stop.is_set():
            n = f"CN=w{k}-{i}"
            i += 1
            try:
                with store.transaction() as tx:
                    rid = tx.next_id("request")
                    tx.put("request", {"request_id": rid, "disposition": 20, "subject": n})
                with lock:
                    acked[rid] = n
            except OutcomeUnknown:
                unknown.add(n)
            except CertSrvError as e:
                (not_sent.add(n) if e.hresult == RPC_S_CALL_FAILED_DNE else other.append(e))
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        _until("load", lambda: len(acked) >= 30)
        stop_immediate(pair.primary)
        promote(pair.standby)
        with lock:
            mark = len(acked)
        _until("commits on the promoted standby", lambda: len(acked) >= mark + 30, timeout=6 * TTL + 60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        store.close()
    assert not other, other[:3]
    new_primary = pair.standby.url(_dbname(url))
    present = {int(str(r[0])): str(r[1]) for r in _rows(new_primary, "SELECT request_id, subject FROM request")}
    lost = {rid: n for rid, n in acked.items() if present.get(rid) != n}
    assert not lost, f"acknowledged commits lost or overwritten: {sorted(lost.items())[:5]}"
    assert not (not_sent & set(present.values())), "a write refused as not sent is in the database"
    _gapless(new_primary)


def test_primary_lost_under_load_every_acknowledged_commit_is_on_the_promoted_standby(pair: PgPair) -> None:
    _failover_under_load(pair)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(SLOW_TRIALS))
def test_primary_lost_under_load_trials(trial: int) -> None:
    with pair_context(sync="remote_apply") as p:
        _failover_under_load(p)


def test_replication_state_sync_then_async_and_none(pair: PgPair, pg_url: str) -> None:
    url = pair.new_database("rep")
    with PgStore.create(url, "Replication CA", lease_ttl=TTL) as store:
        r = store.replication()
        assert r["mode"] == "sync" and r["warning"] is None
        assert r["synchronous_commit"] == "remote_apply" and r["synchronous_standby_names"] == "standby1"
        assert [(s["name"], s["state"], s["sync_state"]) for s in r["standbys"]] == [
            ("standby1", "streaming", "sync")]
        with psycopg.connect(pair.primary.url(), autocommit=True) as c:
            c.execute("ALTER SYSTEM RESET synchronous_standby_names")
            c.execute("SELECT pg_reload_conf()")
        _until("the standby to turn asynchronous", lambda: store.replication()["mode"] == "async")
        r = store.replication()
        assert r["standbys"][0]["sync_state"] == "async"
        assert r["warning"] is not None and "acknowledged writes can be lost on failover" in r["warning"]
    with PgStore.create(pg_url, "Lone CA", lease_ttl=TTL) as lone:
        r = lone.replication()
        assert r["mode"] == "none" and r["standbys"] == [] and "no standby server" in str(r["warning"])


def test_no_writable_server_within_three_lease_times_is_not_sent_then_the_store_goes_on(pair: PgPair) -> None:
    ttl = 1.0
    url = pair.new_database("dne")
    name = _dbname(url)
    store = PgStore.create(url, "Failover CA", lease_ttl=ttl)
    try:
        _put(store, "before")
        stop_immediate(pair.primary)  # and no promotion yet: no writable server at all
        _until("the store to notice", lambda: store.health().state != "ok", timeout=30)
        with pytest.raises(CertSrvError) as refused:
            _put(store, "while-down")  # waits inside (three lease times), then: not sent
        e = refused.value
        assert e.hresult == RPC_S_CALL_FAILED_DNE and "nothing was written" in e.message
        assert str(e).startswith(f"{store.subject}: 0x800706BF RPC_S_CALL_FAILED_DNE: ")
        promote(pair.standby)
        _put(store, "after")  # the same store goes on once a writable server answers
        assert store.role == "writer"
    finally:
        store.close()
    present = _names(pair.standby.url(name))
    assert {"before", "after"} <= present and "while-down" not in present
    _gapless(pair.standby.url(name))


def test_an_id_taken_before_a_reconnect_is_never_handed_out_again(pair: PgPair) -> None:
    """A commit durable on both servers whose answer was lost (the primary died while it waited for the
    standby) raises OutcomeUnknown; the database's max id then counts it. A transaction that took the next id
    before the reconnect and commits after it must keep its id to itself: the next transaction gets another
    (a reused id would overwrite the row: a put is a whole-row upsert)."""
    url = pair.new_database("ids")
    name = _dbname(url)
    store = PgStore.create(url, "Failover CA", lease_ttl=TTL)

    def issue(subject: str) -> int:
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 20, "subject": subject})
        return rid

    try:
        assert [issue(f"CN=before-{i}") for i in range(3)] == [1, 2, 3]
        with psycopg.connect(pair.standby.url(name), autocommit=True) as c:
            c.execute("SELECT pg_wal_replay_pause()")  # remote_apply: the next commit waits for the standby
        outcome: list[BaseException] = []

        def unanswered() -> None:
            try:
                issue("CN=in-flight")
            except BaseException as e:  # checked below
                outcome.append(e)

        t = threading.Thread(target=unanswered)
        t.start()
        _until("the commit to wait for the standby", lambda: _rows(
            pair.primary.url(name), "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")[0][0] == 1)
        stop_immediate(pair.primary)
        t.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown), outcome
        with store.transaction() as tx:  # this body takes its id before the store reconnects ...
            held_id = tx.next_id("request")
            with psycopg.connect(pair.standby.url(name), autocommit=True) as c:
                c.execute("SELECT pg_wal_replay_resume()")
            promote(pair.standby)  # ... and commits after (the in-flight one is on the promoted standby)
            tx.put("request", {"request_id": held_id, "disposition": 20, "subject": "CN=held"})
        after = issue("CN=after")
        assert after != held_id
    finally:
        store.close()
    rows = dict(_rows(pair.standby.url(name), "SELECT request_id, subject FROM request"))
    assert rows[4] == "CN=in-flight" and rows[held_id] == "CN=held" and rows[after] == "CN=after"
    _gapless(pair.standby.url(name))
