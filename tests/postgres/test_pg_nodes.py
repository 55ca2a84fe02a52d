"""Several nodes on one CA database (issue 14), at the store: a writer and standbys on a real PostgreSQL.

- a standby reads, refuses writes with NotWriter naming the writer, and promotes once the lease is free;
- a writer SIGKILLed under load: a standby promotes, every acknowledged record is there, request ids and
  CRL numbers go on above every one the dead writer used, the log stays gapless;
- split brain: a writer SIGSTOPped past its lease, another promotes, SIGCONT: its commit is refused and
  nothing of it is in the database;
- each lease take starts a generation stamped with its epoch; role changes are told to callbacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pycertsrv.errors import Conflict, NotWriter, error_from_json
from pycertsrv.store.postgres import PgStore
from pycertsrv.store.postgres.lease import holder_name

TTL = 2.0  # a short lease for tests (the default is 10 s)
SCRIPT = Path(__file__).with_name("node_script.py")


def _db(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as c:
        return list(c.execute(query).fetchall())


def _gapless(url: str) -> int:
    lsns = [int(str(r[0])) for r in _db(url, "SELECT lsn FROM log_record ORDER BY lsn")]
    assert lsns == list(range(1, len(lsns) + 1)), "the log has a gap or a duplicate"
    return len(lsns)


def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


class Node:
    """A writer in a subprocess (tests/postgres/node_script.py), driven line by line."""

    def __init__(self, url: str, ttl: float = TTL) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), url, str(ttl)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ready = self.line()
        assert ready.startswith("ready"), ready + self.proc.stderr.read()  # type: ignore[union-attr]
        self.epoch = int(ready.split()[1])

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for n in made:
        n.end()


def test_a_standby_reads_refuses_writes_naming_the_writer_and_promotes_when_the_lease_is_free(pg_url: str) -> None:
    writer = PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL)
    writer.advertise(["unix:/run/certsrv/a.sock", "a.example:8443"])
    standby = PgStore.open(pg_url, lease_ttl=TTL, standby=True)
    seen: list[str] = []
    standby.on_role_change(seen.append)
    try:
        assert (writer.role, standby.role) == ("writer", "standby")
        assert standby.epoch == writer.epoch
        with writer.transaction() as tx:
            tx.put("setting", {"name": "k", "value": "from the writer"})
        got = standby.get("setting", "k")
        assert got is not None and got["value"] == "from the writer"  # reads work on a standby
        with pytest.raises(NotWriter) as refused:
            with standby.transaction() as tx:
                tx.put("setting", {"name": "x", "value": "from the standby"})
        e = refused.value
        assert e.writer["holder"] == holder_name() and e.writer["epoch"] == writer.epoch
        assert e.writer["endpoints"] == ["unix:/run/certsrv/a.sock", "a.example:8443"]
        assert str(e).startswith(f"{standby.subject}: 0x80071397 ERROR_HOST_NODE_NOT_RESOURCE_OWNER: this node is "
                                 f"a standby; the writer is {holder_name()} (epoch {writer.epoch}, at unix:")
        assert e.http_status == 503 and e.to_json()["writer"] == e.writer
        back = error_from_json(e.to_json())  # the client gets the same refusal, writer included
        assert isinstance(back, NotWriter) and back.writer == e.writer
        info = standby.writer_info()
        assert info["holder"] == holder_name() and 0 <= info["renewed_age_s"] < TTL
        assert standby.try_promote() is False  # the writer is alive
        with pytest.raises(Conflict) as busy:  # a CLI verb (standby=False) still refuses with ERROR_BUSY
            PgStore.open(pg_url, lease_ttl=TTL)
        assert busy.value.hresult == 0x800700AA
        first_epoch = writer.epoch
        writer.close()  # releases the lease: a standby takes it at once
        assert standby.try_promote() is True
        assert standby.role == "writer" and standby.epoch == first_epoch + 1
        with standby.transaction() as tx:
            tx.put("setting", {"name": "x", "value": "now the writer"})
        assert tx.lsn == 2
        _until("the role change callback", lambda: seen == ["writer"])
    finally:
        standby.close()
        writer.close()
    assert _db(pg_url, "SELECT value FROM setting WHERE name = 'x'") == [("now the writer",)]
    _gapless(pg_url)


def test_every_lease_take_starts_a_generation_stamped_with_its_epoch(pg_url: str) -> None:
    with PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL) as a:
        e1 = a.epoch
        assert [(g.generation, g.epoch) for g in a.generations()] == [(1, e1)]  # the empty first one is ours
        with a.transaction() as tx:
            tx.put("setting", {"name": "a", "value": "1"})
    with PgStore.open(pg_url, lease_ttl=TTL) as b:
        gens = b.generations()
        assert [(g.generation, g.epoch, g.closed) for g in gens] == [(1, e1, True), (2, b.epoch, False)]
        assert gens[1].first_lsn == 2 and b.epoch == e1 + 1
    with PgStore.open(pg_url, lease_ttl=TTL, standby=True) as c:  # a free lease: a "standby" open takes it
        assert c.role == "writer" and c.epoch == e1 + 2
        # Its generation was empty: reused, stamped with the new epoch (one epoch per generation).
        assert [(g.generation, g.epoch) for g in c.generations()] == [(1, e1), (2, c.epoch)]


def test_a_killed_writer_s_standby_promotes_and_ids_and_crl_numbers_go_on(pg_url: str, nodes: list[Node]) -> None:
    PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL).close()
    node = Node(pg_url)
    nodes.append(node)
    standby = PgStore.open(pg_url, lease_ttl=TTL, standby=True)
    try:
        assert standby.role == "standby"
        node.send("issue 100000")  # issues until killed
        acked: list[tuple[int, int]] = []
        while len(acked) < 40:
            word, rid, crl = node.line().split()
            assert word == "ack"
            acked.append((int(rid), int(crl)))
        node.proc.send_signal(signal.SIGKILL)  # mid-stream: a transaction is very likely in flight
        node.proc.wait()
        _until("the standby to take the dead writer's lease", standby.try_promote, timeout=3 * TTL + 10)
        assert standby.epoch == node.epoch + 1
        requests = {int(str(r[0])) for r in _db(pg_url, "SELECT request_id FROM request")}
        crls = {int(str(r[0])) for r in _db(pg_url, "SELECT number FROM crl")}
        assert {r for r, _ in acked} <= requests and {c for _, c in acked} <= crls  # nothing acknowledged lost
        with standby.transaction() as tx:
            rid, crl = tx.next_id("request"), tx.next_id("crl")
            tx.put("request", {"request_id": rid, "disposition": 20})
            tx.put("crl", {"number": crl, "entries": 0})
        assert rid == max(requests) + 1 and crl == max(crls) + 1  # monotonic across the change of writer
        gens = standby.generations()
        assert gens[-1].epoch == standby.epoch and gens[-2].epoch == node.epoch
    finally:
        standby.close()
    _gapless(pg_url)


def test_split_brain_a_writer_stopped_past_its_lease_cannot_commit_after_sigcont(pg_url: str,
                                                                                  nodes: list[Node]) -> None:
    PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL).close()
    node = Node(pg_url)
    nodes.append(node)
    node.send("put before")
    assert node.line() == "ok 1"
    standby = PgStore.open(pg_url, lease_ttl=TTL, standby=True)
    try:
        assert standby.try_promote() is False  # alive and renewing
        node.proc.send_signal(signal.SIGSTOP)  # frozen: it renews nothing, but believes it is the writer
        _until("the frozen writer's lease to expire", standby.try_promote, timeout=3 * TTL + 10)
        with standby.transaction() as tx:
            tx.put("setting", {"name": "new-writer", "value": "1"})
        node.proc.send_signal(signal.SIGCONT)
        node.send("put from-the-old-writer")
        answer = node.line()
        assert answer.startswith("refused NotWriter 0x80071397 this node is a standby; the writer is "
                                 f"{holder_name()} (epoch {standby.epoch}"), answer
        node.send("put again")  # and it stays refused: it is a standby now
        assert node.line().startswith("refused NotWriter")
    finally:
        standby.close()
    assert _db(pg_url, "SELECT count(*) FROM setting WHERE value = 'from the subprocess'") == [(1,)]  # 'before'
    assert _gapless(pg_url) == 2


@pytest.mark.timeout(120)
def test_a_writer_frozen_inside_a_commit_does_not_keep_its_lease_row_locked(pg_url: str, nodes: list[Node]) -> None:
    """Without the server's idle-in-transaction timeout on the writer's connection, the frozen writer's row
    lock would make every standby's lease take wait forever (this test would then time out)."""
    PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL).close()
    node = Node(pg_url)
    nodes.append(node)
    standby = PgStore.open(pg_url, lease_ttl=TTL, standby=True)
    try:
        node.send("hold")
        assert node.line() == "holding"
        node.proc.send_signal(signal.SIGSTOP)
        _until("the standby to take the lease", standby.try_promote, timeout=6 * TTL + 30)
        with standby.transaction() as tx:
            tx.put("setting", {"name": "after", "value": "1"})
        assert standby.epoch == node.epoch + 1
    finally:
        node.proc.send_signal(signal.SIGCONT)
        standby.close()
    _gapless(pg_url)


def test_a_fenced_writer_becomes_a_standby_and_can_promote_again(pg_url: str) -> None:
    a = PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL)
    seen: list[str] = []
    a.on_role_change(seen.append)
    b = PgStore.open(pg_url, lease_ttl=TTL, takeover=True)  # an operator's takeover fences a
    try:
        _until("the heartbeat to find the epoch superseded", lambda: a.role == "standby")
        with pytest.raises(NotWriter) as e:
            a.transaction()
        assert e.value.writer["epoch"] == b.epoch
        with b.transaction() as tx:
            ids = [tx.next_id("request") for _ in range(3)]
            for i in ids:
                tx.put("request", {"request_id": i, "disposition": 9})
        b.close()
        assert a.try_promote() is True and a.role == "writer" and a.epoch == b.epoch + 1
        with a.transaction() as tx:
            rid = tx.next_id("request")  # recomputed from the database at the promotion
            tx.put("request", {"request_id": rid, "disposition": 9})
        assert rid == ids[-1] + 1
        _until("both role changes told", lambda: seen == ["standby", "writer"])
    finally:
        b.close()
        a.close()
    _gapless(pg_url)


def test_concurrent_commits_on_a_fenced_writer_are_all_refused_and_none_applied(pg_url: str) -> None:
    a = PgStore.create(pg_url, "Nodes CA", lease_ttl=60.0)  # a long lease: only the commit can notice
    try:
        with psycopg.connect(pg_url, autocommit=True) as c:  # another node took over behind a's back
            c.execute("UPDATE writer_lease SET epoch = epoch + 1, holder = 'elsewhere:1', renewed_us = %s",
                      (time.time_ns() // 1000,))
        outcomes: list[str] = []

        def write(k: int) -> None:
            try:
                with a.transaction() as tx:
                    tx.put("setting", {"name": f"fenced-{k}", "value": "x"})
                outcomes.append("committed")
            except NotWriter:
                outcomes.append("NotWriter")

        threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes == ["NotWriter"] * 8 and a.role == "standby"
    finally:
        a.close()
    assert _db(pg_url, "SELECT count(*) FROM setting WHERE name LIKE 'fenced-%'") == [(0,)]
    assert _db(pg_url, "SELECT count(*) FROM log_record") == [(0,)]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("trial", range(10))
def test_split_brain_under_load_trials(pg_url: str, nodes: list[Node], trial: int) -> None:
    """The writer issues without pause and is SIGSTOPped at whatever point it is (often inside a commit);
    another node takes over and issues; SIGCONT: no record of the old writer follows the new writer's first
    one in the log, and every issuance the old writer acknowledged is in the database."""
    PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL).close()
    node = Node(pg_url)
    nodes.append(node)
    standby = PgStore.open(pg_url, lease_ttl=TTL, standby=True)
    try:
        node.send("issue 1000000")
        for _ in range(20 + 7 * trial):
            assert node.line().startswith("ack")
        node.proc.send_signal(signal.SIGSTOP)
        _until("the frozen writer's lease to expire", standby.try_promote, timeout=6 * TTL + 30)
        for _ in range(10):
            with standby.transaction() as tx:
                rid = tx.next_id("request")
                tx.put("request", {"request_id": rid, "disposition": 20, "subject": f"CN=new-{rid}"})
        node.proc.send_signal(signal.SIGCONT)
        assert node.proc.wait(60) != 0  # its next commit is refused (NotWriter): the script ends on it
        err = node.proc.stderr.read() if node.proc.stderr is not None else ""
        assert "NotWriter" in err, err
        acked = [int(line.split()[1]) for line in node.proc.stdout.read().splitlines()  # type: ignore[union-attr]
                 if line.startswith("ack")]
    finally:
        standby.close()
    present = {int(str(r[0])) for r in _db(pg_url, "SELECT request_id FROM request")}
    assert set(acked) <= present
    # Each lease take starts a generation stamped with its epoch: the epochs' LSN ranges must not interleave.
    ranges = _db(pg_url, "SELECT g.epoch, min(r.lsn), max(r.lsn) FROM log_record r JOIN log_generation g "
                         "ON g.gen = r.gen GROUP BY g.epoch ORDER BY g.epoch")
    assert [int(str(e)) for e, _, _ in ranges] == [node.epoch, node.epoch + 1]
    assert int(str(ranges[0][2])) < int(str(ranges[1][1])), f"an old writer's record after the takeover: {ranges}"
    subjects = [str(r[0]) for r in _db(pg_url, "SELECT subject FROM request ORDER BY request_id")]
    assert sum(s.startswith("CN=new-") for s in subjects) == 10
    _gapless(pg_url)


def test_a_writer_whose_renewals_stall_past_its_lease_stops_calling_its_lease_fresh(pg_url: str) -> None:
    """Issue 14 (split brain, seen by a load balancer): a writer whose renewals the database has not confirmed
    for a lease time may already be replaced, so ``lease_fresh`` (what ``/v1/health/writer`` asks) turns False
    while ``role`` still says writer; once a renewal goes through it is fresh again."""
    with PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL) as writer:
        _until("a renewal confirmed", lambda: writer.lease_fresh)
        # Another session holds the lease row: the heartbeat's UPDATE waits, nothing is confirmed.
        with psycopg.connect(pg_url) as blocker:
            with blocker.transaction():
                blocker.execute("SELECT 1 FROM writer_lease WHERE id = 1 FOR UPDATE")
                _until("the lease seen as stale", lambda: not writer.lease_fresh, timeout=TTL * 10)
                assert writer.role == "writer"  # nobody fenced it: only its freshness says it may be replaced
        _until("a renewal confirmed again", lambda: writer.lease_fresh, timeout=TTL * 10)
        assert writer.role == "writer"


def test_lease_ages_are_measured_by_the_database_servers_clock_not_the_nodes(pg_url: str) -> None:
    """A node whose own clock runs an hour ahead must not take a live lease (issue 14: nodes share only the
    database server's clock); the row's renewal time is the server's, whatever the writer's clock says."""
    from pycertsrv.store.postgres import lease

    with PgStore.create(pg_url, "Nodes CA", lease_ttl=TTL) as writer:
        held = writer.epoch
        skewed = time.time_ns() // 1000 + 3_600_000_000
        with psycopg.connect(pg_url) as c:
            with c.transaction():
                with pytest.raises(Conflict, match="another writer holds"):
                    lease.take(c.cursor(), "skewed node", skewed, TTL)
            renewed, server_now = c.execute(
                f"SELECT renewed_us, {lease.NOW_US} FROM writer_lease WHERE id = 1").fetchone()
        assert 0 <= (int(server_now) - int(renewed)) / 1e6 < 60  # written by the server's clock
        assert _db(pg_url, "SELECT epoch FROM writer_lease WHERE id = 1") == [(held,)]
        assert writer.role == "writer"
