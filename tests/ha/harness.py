"""The HA harness (issue 14): two or three real ``certsrv serve`` nodes on one CA database held by a real
PostgreSQL primary + streaming standby (:mod:`pg_support`), a load generator that records every answered
issuance, revocation and CRL, and the checks the "Must show" trials make on state re-read from the database.

- :class:`HA`: the pair, the CA database, the node homes (the first by ``certsrv init --database``; the others
  the documented way, from a key-only set of the first: :func:`node_home`), the nodes' services;
- :class:`Load`: client threads on every endpoint (``Client("unix:a,unix:b,...")``, which follows the writer),
  each submit with its own request key;
- :func:`check_answered`, :func:`check_monotonic`, :func:`check_retries`, :func:`check_openssl`.

Real parts only: real servers, sockets, SIGKILL/SIGSTOP, X.509 checked with ``openssl``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from pg_support import PgPair
from pycertsrv import config as config_mod
from pycertsrv.client import Client
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home
from support import Service, certsrv, make_csr, openssl_verify

LEASE_TTL = 4.0  # [store] lease_ttl for the trials: short, so a frozen writer's lease expires soon
WAIT = 60.0  # the longest any trial waits for a role change or for answers (a bound, never asserted on)
# Requests are prepared in the node's own process: 2-3 nodes with a worker pool each would be 9 processes on
# this 2-core machine; the trials are about roles and commits, not preparation (issue 15 has its own).
NODE_ENV = {"CERTSRV_WORKERS": "0"}
REQUEST_KEY = "RequestKey"  # the request attribute that holds a submit's key (HA contract)


# --- node homes ------------------------------------------------------------------------------------------------

KEYSET_PASSWORD = "ha trials key set password\n"


def node_home(first: Path, dest: Path, url: str, work: Path) -> Home:
    """A further node's home, made the documented way (issue 14, docs/deployment.md): a key-only set taken
    through the first node's running service (once), restored with ``--key-only --database URL`` (the restore
    checks that the database holds the CA of this key and records the URL)."""
    pw, keyset = work / "keyset.pw", work / "keyset"
    if not keyset.exists():
        pw.write_text(KEYSET_PASSWORD)
        certsrv("backup", str(keyset), "--key-only", "--quiet", "--password-file", str(pw), home=first, check=True)
    certsrv("restore", str(keyset), "--key-only", "--database", url, "--password-file", str(pw), home=dest,
            check=True)
    return Home.at(dest)


def set_lease_ttl(home: Path, ttl: float) -> None:
    """``[store] lease_ttl`` in the home's configuration (the HA contract's key)."""
    cfg = config_mod.load(home)
    config_mod.save(home, cfg.model_copy(update={"store": cfg.store.model_copy(update={"lease_ttl": ttl})}))


# --- nodes -------------------------------------------------------------------------------------------------------

@dataclass
class Node:
    """One ``certsrv serve`` of the CA (its own home, its own Unix socket)."""

    name: str
    service: Service
    frozen: bool = False

    @property
    def address(self) -> str:
        return self.service.address

    @property
    def pid(self) -> int:
        return self.service.pid

    @property
    def alive(self) -> bool:
        return self.service.proc is not None and self.service.proc.poll() is None

    def start(self, wait: bool = True) -> Node:
        self.service.start(wait=wait)
        return self

    def kill(self) -> None:
        """SIGKILL: the node dies mid-whatever (no lease release, no clean close)."""
        self.service.kill()

    def freeze(self) -> None:
        """SIGSTOP: alive, holding its sockets and its database connections, doing nothing."""
        self.service.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT."""
        self.service.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        self.frozen = False

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """A GET over the node's socket: (HTTP status, JSON body or None); (0, None) when nothing answers."""
        return self.http("GET", path, timeout=timeout)

    def http(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        """One HTTP call to this node alone, as a plain client (no following of the writer, no retry): what
        this node itself answers. (0, None) when nothing answers."""
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.service.socket)),
                              base_url="http://certsrv", timeout=timeout, trust_env=False) as h:
                r = h.request(method, path, json=body)
        except httpx.TransportError:
            return 0, None
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, None

    def is_writer(self) -> bool:
        """The load balancer's check (HA contract: ``GET /v1/health/writer`` is 200 only on the writer)."""
        return self.alive and not self.frozen and self.get("/v1/health/writer")[0] == 200

    def health(self) -> dict[str, Any]:
        status, body = self.get("/v1/health")
        assert status == 200 and isinstance(body, dict), f"{self.name}: /v1/health answered {status}: {body}"
        return body

    def ensure_stopped(self) -> None:
        if self.frozen and self.alive:
            self.thaw()
        self.service.ensure_stopped()


# --- the CA on a replication pair, served by several nodes ----------------------------------------------------

class HA:
    """A CA whose database is on ``pair`` (a fresh database), served by ``nodes`` node homes under ``base``."""

    def __init__(self, pair: PgPair, base: Path, nodes: int = 2, *, lease_ttl: float = LEASE_TTL,
                 name: str = "HA Test CA", workers: int | None = 0) -> None:
        self.pair = pair
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.dbname_url = pair.new_database("ha")
        self.dbname = self.dbname_url.split("?")[0].rsplit("/", 1)[1]
        self.lease_ttl = lease_ttl
        first = base / "n1"
        certsrv("init", "--name", name, "--database", self.dbname_url, home=first, check=True)
        set_lease_ttl(first, lease_ttl)
        env = dict(NODE_ENV, CERTSRV_WORKERS=str(workers)) if workers is not None else {}
        # The other nodes' homes are made from the first node's key once it runs (start()).
        self.nodes = [Node(f"n{i}", Service(Home.at(base / f"n{i}"), log_path=base / f"n{i}.log", log_level="info",
                                            env=env)) for i in range(1, nodes + 1)]
        self.ca_cert = first / "publish" / "ca.crt"

    @property
    def endpoints(self) -> str:
        """Every node's endpoint, comma-separated (``--server`` / ``Client``)."""
        return ",".join(n.address for n in self.nodes)

    def start(self) -> HA:
        """Start the first node (it takes the lease: the writer), make the others' homes from its key, start
        them (standbys)."""
        first = self.nodes[0]
        first.start()
        self.wait_writer()
        for n in self.nodes[1:]:
            node_home(first.service.home.root, n.service.home.root, self.dbname_url, self.base)
            set_lease_ttl(n.service.home.root, self.lease_ttl)
            n.start()
        return self

    def client(self, **kw: Any) -> Client:
        """A client over every node's endpoint (it sends writes to the writer and follows it)."""
        return Client(self.endpoints, **kw)

    def writer(self) -> Node | None:
        """The node that says it is the writer (when exactly one does), else None."""
        ws = [n for n in self.nodes if n.is_writer()]
        assert len(ws) <= 1, f"two nodes say they are the writer: {[n.name for n in ws]}"
        return ws[0] if ws else None

    def wait_writer(self, other_than: Node | None = None, timeout: float = WAIT) -> Node:
        """Wait until a node (not ``other_than``) is the writer; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            w = self.writer()
            if w is not None and w is not other_than:
                return w
            if time.monotonic() > deadline:
                raise AssertionError(f"no node became the writer within {timeout}s:\n" + self.logs())
            time.sleep(0.1)

    @contextlib.contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection to the CA database on whichever server accepts writes now (the multi-host URL):
        re-reads after a failover read the promoted standby."""
        with psycopg.connect(self.dbname_url, autocommit=True, connect_timeout=10) as c:
            yield c

    def lease(self) -> tuple[int, str]:
        """The database's writer lease: (epoch, holder)."""
        with self.db() as c:
            row = c.execute("SELECT epoch, holder FROM writer_lease WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.service.log()[-tail:]}" for n in self.nodes)

    def close(self) -> None:
        for n in self.nodes:
            n.ensure_stopped()


@contextlib.contextmanager
def ha_context(pair: PgPair, nodes: int = 2, **kw: Any) -> Iterator[HA]:
    """An :class:`HA` under a short temp dir (Unix socket paths are limited to 107 bytes), started; stopped and
    removed at the end, its database dropped."""
    base = Path(tempfile.mkdtemp(prefix="ha", dir="/tmp"))
    ha = HA(pair, base, nodes, **kw)
    try:
        yield ha.start()
    finally:
        ha.close()
        shutil.rmtree(base, ignore_errors=True)


# --- load ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """An answered submit."""

    worker: int
    key: str
    cn: str
    csr: bytes
    request_id: int
    serial: str
    sent_ns: int
    answered_ns: int


@dataclass(frozen=True)
class Sent:
    """A submit whose outcome is not known (an error came back: it may or may not have been written)."""

    key: str
    cn: str
    csr: bytes
    error: str


def submit(c: Client, csr: bytes, key: str) -> dict[str, Any]:
    """A submit with its request key (HA contract: ``Client.submit(..., request_key=KEY)``)."""
    return c.submit(csr, request_key=key)


@dataclass
class Load:
    """``workers`` threads, each with its own multi-endpoint client, submitting until stopped; every
    ``revoke_every``-th step a worker revokes one of its own answered certificates; worker 0 publishes a CRL
    every ``crl_every``-th step. Everything answered is recorded with its send and answer times."""

    ha: HA
    workers: int = 3
    revoke_every: int = 4
    crl_every: int = 8
    timeout: float = 20.0
    issued: list[Answer] = field(default_factory=list)
    unknown: list[Sent] = field(default_factory=list)
    revoked: list[tuple[str, int, int]] = field(default_factory=list)  # (serial, sent_ns, answered_ns)
    unknown_revokes: list[str] = field(default_factory=list)
    crls: list[tuple[int, int, int]] = field(default_factory=list)  # (number, sent_ns, answered_ns)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def answered(self) -> int:
        """Writes answered so far (issuances + revocations + CRLs)."""
        return len(self.issued) + len(self.revoked) + len(self.crls)

    def wait(self, more: int, timeout: float = WAIT, what: str = "answers") -> None:
        """Wait until ``more`` writes were answered beyond what has been answered now."""
        goal = self.answered() + more
        deadline = time.monotonic() + timeout
        while self.answered() < goal:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {self.answered()}/{goal} writes answered in {timeout}s; last errors "
                                     f"{self.errors[-3:]}\n" + self.ha.logs())
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout * 3)

    def _run(self, w: int) -> None:
        mine: list[str] = []
        step = 0
        with self.ha.client(timeout=self.timeout) as c:
            while not self._stop.is_set():
                step += 1
                try:
                    if w == 0 and self.crl_every and step % self.crl_every == 0:
                        t0 = time.monotonic_ns()
                        number = int(c.publish_crl()["number"])
                        with self._lock:
                            self.crls.append((number, t0, time.monotonic_ns()))
                    elif self.revoke_every and step % self.revoke_every == 0 and mine:
                        self._revoke(c, mine.pop(0))
                    else:
                        a = self._submit(c, w, step)
                        if a is not None:
                            mine.append(a.serial)
                except CertSrvError as e:
                    self.errors.append(str(e))
                    time.sleep(0.05)

    def _submit(self, c: Client, w: int, step: int) -> Answer | None:
        key = uuid.uuid4().hex
        cn = f"w{w}-{step}-{key[:8]}.example.com"
        csr = make_csr(cn)
        t0 = time.monotonic_ns()
        try:
            r = submit(c, csr, key)
        except CertSrvError as e:
            with self._lock:
                self.unknown.append(Sent(key, cn, csr, str(e)))
            self.errors.append(str(e))
            return None
        a = Answer(w, key, cn, csr, int(r["request_id"]), str(r["serial"]), t0, time.monotonic_ns())
        with self._lock:
            self.issued.append(a)
        return a

    def _revoke(self, c: Client, serial: str) -> None:
        t0 = time.monotonic_ns()
        try:
            c.revoke(serial, "keyCompromise")
        except CertSrvError as e:
            self.unknown_revokes.append(serial)
            self.errors.append(str(e))
            return
        with self._lock:
            self.revoked.append((serial, t0, time.monotonic_ns()))


# --- checks on state re-read from the database ----------------------------------------------------------------

def db_requests(ha: HA) -> dict[int, tuple[str | None, str | None, bytes | None]]:
    """request_id → (serial, revoked_at, raw_cert), re-read from the database."""
    with ha.db() as c:
        rows = c.execute("SELECT request_id, serial, revoked_at, raw_cert FROM request").fetchall()
    return {int(r[0]): (r[1], r[2], bytes(r[3]) if r[3] is not None else None) for r in rows}


def keys_in_db(ha: HA) -> dict[str, list[int]]:
    """request key → the request ids that carry it."""
    out: dict[str, list[int]] = {}
    with ha.db() as c:
        for rid, value in c.execute("SELECT request_id, value FROM attribute WHERE name = %s ORDER BY request_id",
                                    (REQUEST_KEY,)):
            out.setdefault(str(value), []).append(int(rid))
    return out


def check_answered(ha: HA, load: Load) -> None:
    """Every answered issuance is in the database with the answered id and serial; every answered revocation
    is revoked there; every answered CRL number is there; no request key is on two requests."""
    reqs = db_requests(ha)
    lost = [a for a in load.issued if a.request_id not in reqs or reqs[a.request_id][0] != a.serial]
    if lost:
        keys = keys_in_db(ha)
        with ha.db() as c:
            subjects = {int(r[0]): r[1] for r in c.execute("SELECT request_id, request_subject FROM request")}
        detail = [(a.request_id, a.serial, a.cn, "in db:", reqs.get(a.request_id, (None,))[0],
                   subjects.get(a.request_id), "key on", keys.get(a.key)) for a in lost[:3]]
        raise AssertionError(f"{len(lost)} answered issuances missing or changed: {detail}; max id in the "
                             f"database {max(reqs) if reqs else None}; unknown outcomes {len(load.unknown)}; "
                             f"errors {load.errors[-4:]}\n{ha.logs()}")
    by_serial = {s: r for s, r, _ in reqs.values() if s is not None}
    unrevoked = [s for s, _, _ in load.revoked if by_serial.get(s) is None]
    assert not unrevoked, f"answered revocations not in the database: {unrevoked[:3]}"
    with ha.db() as c:
        numbers = {int(r[0]) for r in c.execute("SELECT number FROM crl")}
    assert not [n for n, _, _ in load.crls if n not in numbers], "answered CRL numbers missing from the database"
    dupes = {k: v for k, v in keys_in_db(ha).items() if len(v) > 1}
    assert not dupes, f"a request key on several requests (a second certificate): {list(dupes.items())[:3]}"


def check_monotonic(ha: HA, load: Load, cut_ns: int) -> None:
    """Request ids and CRL numbers go on increasing across the failover at ``cut_ns`` (the kill): per worker in
    the order answered; every one sent after the cut is above every one answered before it; the database's
    CRLs are numbered in the order they were made."""
    for w in range(load.workers):
        ids = [a.request_id for a in sorted(load.issued, key=lambda a: a.answered_ns) if a.worker == w]
        assert ids == sorted(set(ids)), f"worker {w}: request ids not increasing: {ids}"
    crl_numbers = [n for n, _, _ in sorted(load.crls, key=lambda x: x[2])]
    assert crl_numbers == sorted(set(crl_numbers)), f"CRL numbers not increasing: {crl_numbers}"
    for what, items in (("request id", [(a.request_id, a.sent_ns, a.answered_ns) for a in load.issued]),
                        ("CRL number", load.crls)):
        before = [n for n, _, done in items if done < cut_ns]
        after = [n for n, sent, _ in items if sent > cut_ns]
        if before and after:
            assert min(after) > max(before), f"{what}s after the failover ({min(after)}) not above those before " \
                                             f"({max(before)})"
    with ha.db() as c:
        rows = c.execute("SELECT number, this_update FROM crl ORDER BY number").fetchall()
    updates = [str(r[1]) for r in rows]
    assert updates == sorted(updates), f"CRL numbers not in the order the CRLs were made: {rows}"


def check_retries(ha: HA, load: Load, sample: int = 3) -> None:
    """A retried submit with the same request key gets the first answer (same id and serial), never a second
    certificate; every submit whose outcome was unknown, retried with its key, ends as exactly one request."""
    with ha.client(timeout=30) as c:
        for a in load.issued[:: max(1, len(load.issued) // sample)][:sample]:
            again = submit(c, a.csr, a.key)
            assert (int(again["request_id"]), str(again["serial"])) == (a.request_id, a.serial), \
                f"a retried submit made another certificate: first {a.request_id}/{a.serial}, again {again}"
        for s in load.unknown:
            submit(c, s.csr, s.key)
    keys = keys_in_db(ha)
    for a in load.issued:
        assert keys.get(a.key) == [a.request_id], f"request key {a.key}: requests {keys.get(a.key)}"
    for s in load.unknown:
        assert len(keys.get(s.key, [])) == 1, f"unknown-outcome submit {s.key} retried: {keys.get(s.key)}"


def check_openssl(ha: HA, load: Load, work: Path, n: int = 3) -> None:
    """``openssl verify`` a few answered certificates as stored in the database, first and last included."""
    reqs = db_requests(ha)
    picks = [load.issued[0], load.issued[-1], *load.issued[1:-1][:: max(1, len(load.issued) // n)][: n - 2]]
    for a in picks:
        der = reqs[a.request_id][2]
        assert der is not None
        openssl_verify(ha.ca_cert, der, work)


def node_epoch(node: Node) -> int | None:
    """The epoch a node reports in ``/v1/health`` (HA contract: ``node.epoch``)."""
    status, body = node.get("/v1/health")
    if status != 200 or not isinstance(body, dict):
        return None
    epoch = (body.get("node") or {}).get("epoch")
    return int(epoch) if epoch is not None else None


def until(what: str, check: Callable[[], bool], timeout: float = WAIT, ha: HA | None = None) -> None:
    """Poll ``check`` until true (a bound on waiting, never an assertion on time)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s" + ("\n" + ha.logs() if ha else ""))
        time.sleep(0.05)
