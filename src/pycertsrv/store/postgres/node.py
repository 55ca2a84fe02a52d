"""Several nodes on one CA database (issue 14): the writer and standby roles (a part of ``PgStore``).

- **Writer**: holds the lease (:mod:`.lease`) and is the only node that commits. Every lease take (open,
  promotion, re-take after a reconnect) recomputes every counter from the database (next LSN, generation,
  request ids, CRL numbers: issue 12, never a process-local value alone) and starts a new generation
  stamped with the lease epoch (one epoch per generation: the backup set's lineage).
- **Standby** (``open(standby=True)`` while another live writer holds the lease, or a fenced writer): reads
  work; writes raise :class:`~pycertsrv.errors.NotWriter` naming the writer. :meth:`PgNode.try_promote` takes
  an expired lease (or one held by a dead process of this host).
- **Fenced** (the heartbeat or a commit finds the epoch superseded): the node becomes a standby; nothing of
  it is applied (the fencing trigger of :mod:`.ddl` v2 refuses it anyway).
- **PostgreSQL failover**: a commit whose connection broke raises OutcomeUnknown (RPC_S_CALL_FAILED: it may
  have been written); the store reconnects through the URL's hosts (``target_session_attrs=read-write``),
  re-takes its own lease (epoch + 1, a new generation), recomputes its counters and goes on. A write that
  comes while it reconnects waits for it (up to three lease times: a standby server's promotion), else
  RPC_S_CALL_FAILED_DNE (nothing was written; safe to retry).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import (
    ERROR_BUSY,
    RPC_S_CALL_FAILED_DNE,
    CertSrvError,
    Conflict,
    NotWriter,
    Unavailable,
)
from .. import logfile, schema
from . import lease
from .connect import Fenced, as_certsrv, connect, connection_lost
from .lease import Heartbeat, Lease
from .replication import replication_state

if TYPE_CHECKING:
    from ..options import StoreOptions

log = logging.getLogger("pycertsrv.store.postgres")

WRITER = "writer"
STANDBY = "standby"
RECONNECT = "reconnect"  # the writer connection may be gone: probe it, else reconnect and re-take the lease
RESYNC = "resync"  # a commit failed on a sound connection: recompute the counters before the next one
RECONNECT_TTLS = 3.0  # issue 14: a write waits this many lease times for a standby server's promotion


class Counters:
    """Every counter of the writer, read from the database in the lease-take transaction."""

    def __init__(self, cur: Any) -> None:
        self.last_lsn = int(cur.execute("SELECT coalesce(max(lsn), 0) FROM log_record").fetchone()[0])
        gen, first, closed = cur.execute(
            "SELECT gen, first_lsn, closed_us FROM log_generation ORDER BY gen DESC LIMIT 1").fetchone()
        self.gen, self.first, self.closed = int(gen), int(first), closed is not None
        nbytes, n = cur.execute("SELECT coalesce(sum(length(payload)), 0), count(*) FROM log_record "
                                "WHERE gen = %s", (self.gen,)).fetchone()
        self.records = int(n)
        self.size = logfile.HEADER_SIZE + int(nbytes) + int(n) * logfile.REC_SIZE
        self.ids: dict[str, int] = {}
        for t in schema.TABLES.values():  # every table whose key next_id hands out (request ids, CRL numbers, ..)
            if len(t.key) == 1 and next(c.type for c in t.columns if c.name == t.key[0]) == "INTEGER":
                self.ids[t.name] = int(cur.execute(f"SELECT coalesce(max({t.key[0]}), 0) FROM {t.name}").fetchone()[0])

    def merged_ids(self, handed_out: dict[str, int]) -> dict[str, int]:
        """The next-id counters: the database's, but never below one this process already handed out. A
        transaction body may have taken an id before a reconnect or resync recomputed the counters and commit
        after it; the same id handed out again would make two records write one row (a put is a whole-row
        upsert), and an acknowledged issuance would be overwritten by another. Ids never committed are gaps."""
        return {t: max(v, handed_out.get(t, 0)) for t, v in self.ids.items()}

    def stamp(self, cur: Any, epoch: int, now_us: int) -> None:
        """One epoch per generation: an empty open generation takes ``epoch``; else the next one starts."""
        if self.records == 0 and not self.closed:
            cur.execute("UPDATE log_generation SET epoch = %s WHERE gen = %s", (epoch, self.gen))
            return
        cur.execute("UPDATE log_generation SET closed_us = %s WHERE gen = %s AND closed_us IS NULL",
                    (now_us, self.gen))
        self.gen, self.first, self.size, self.records, self.closed = (
            self.gen + 1, self.last_lsn + 1, logfile.HEADER_SIZE, 0, False)
        cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us, epoch) VALUES (%s, %s, %s, %s)",
                    (self.gen, self.first, now_us, epoch))


class PgNode:
    """Roles, promotion, fencing and reconnection (mixed into :class:`.engine.PgStore`)."""

    url: str
    subject: str
    lease_ttl: float
    options: StoreOptions
    lease: Lease | None
    _write_lock: threading.RLock
    _cond: threading.Condition
    _writer: Any
    _queue: list[Any]
    _errors: dict[int, CertSrvError]
    _round: int
    _role: str
    _recover: str | None
    _lost_at: float
    _seen_epoch: int
    _endpoints: list[str]
    _callbacks: list[Callable[[str], None]]
    _events: queue.SimpleQueue[str | None]
    _dispatcher: threading.Thread | None
    _heartbeat: Heartbeat | None
    _recoverer: threading.Thread | None
    _closed: bool
    _closing: bool
    _next_lsn: int
    _appended_lsn: int
    _committed_lsn: int
    _gen: int
    _gen_first: int
    _gen_size: int
    _ids: dict[str, int]

    if TYPE_CHECKING:
        def _quiesce(self) -> None: ...
        def _check_open(self) -> None: ...
        def _rows(self, query: str, params: Sequence[Any] = (), *, patient: bool = True
                  ) -> list[tuple[Any, ...]]: ...
        def _reader(self) -> Any: ...

    # ---------------------------------------------------------------- the contract (issue 14)

    @property
    def role(self) -> str:
        """``"writer"`` (holds the lease, commits) or ``"standby"`` (reads; writes raise NotWriter)."""
        return self._role

    @property
    def epoch(self) -> int:
        """The writer's lease epoch: this node's own when it is the writer, else the last one it saw."""
        held = self.lease
        return held.epoch if self._role == WRITER and held is not None else self._seen_epoch

    # A commit waits for the server (and a synchronous standby), or for a failover: callers with an event loop
    # run it in a thread (service.workers.BatchCommitter).
    commits_wait_on_network = True

    @property
    def lease_fresh(self) -> bool:
        """Whether this node is the writer and its lease was confirmed by the database within the lease time.

        A writer frozen (SIGSTOP) past its lease and then thawed still has ``role == "writer"`` until its next
        renewal finds the epoch superseded; it cannot commit (the epoch check and the trigger refuse it), and
        this lets the load balancer's ``/v1/health/writer`` stop naming it at once.
        """
        beat = self._heartbeat
        return self._role == WRITER and beat is not None and beat.fresh(self.lease_ttl)

    def writer_info(self, *, patient: bool = True) -> dict[str, Any]:
        """Who holds the lease now: ``holder`` (``host:pid``, '' when free), ``epoch``, ``endpoints`` (what it
        advertised), ``renewed_age_s`` (seconds since it renewed, by the database server's clock; None when free)."""
        row = self._rows(lease.READ_SQL, patient=patient)[0]
        info = lease.info(row)
        self._seen_epoch = int(info["epoch"])
        return info

    def advertise(self, endpoints: Sequence[str]) -> None:
        """Where this node's service listens (``unix:/path``, ``host:port``): recorded in the lease row while it
        is the writer, and again at every lease take (a standby names them in NotWriter; clients follow them)."""
        self._endpoints = [str(e) for e in endpoints]
        held = self.lease
        if self._role != WRITER or held is None:
            return  # written when this node takes the lease
        try:
            conn = self._reader()
            with conn.transaction():
                lease.advertise(conn.cursor(), held, self._endpoints)
        except Exception as e:  # the next lease take writes them; advertising never fails a service start
            log.warning("could not record the advertised endpoints now (%s); they are written at the next "
                        "lease take", as_certsrv(self.url, e).message)

    def try_promote(self) -> bool:
        """Become the writer if the lease is free, expired, or held by a dead process of this host.

        :returns: True when this node is the writer (already, or now); False while a live writer holds it.
        """
        self._check_open()
        with self._write_lock:
            if self._role == WRITER:
                return True
            for fresh in (False, True):  # an idle connection the server dropped is found broken only when used
                try:
                    self._take_locked()
                    break
                except Conflict as e:
                    if e.hresult != ERROR_BUSY:
                        raise
                    return False
                except CertSrvError as e:
                    if not connection_lost(e):
                        raise
                    if fresh:
                        log.warning("promotion deferred: %s", e.message)
                        return False
        log.warning("%s: this node is now the writer (lease epoch %d)", self.subject, self.epoch)
        return True

    def on_role_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(role)`` after each change of role (from a thread of the store's own, in order)."""
        self._callbacks.append(callback)

    def replication(self) -> dict[str, Any]:
        """The PostgreSQL replication state as the writer's server sees it (see :mod:`.replication`)."""
        self._check_open()
        return replication_state(lambda query: self._rows(query))

    # ---------------------------------------------------------------- taking the lease

    def _writer_conn(self) -> Any:
        w = self._writer
        if w is None or w.closed or w.broken:
            with contextlib.suppress(Exception):
                if w is not None:
                    w.close()
            self._writer = None
            self._writer = connect(self.url, idle_tx_timeout=self.lease_ttl)
        return self._writer

    def _take_locked(self, *, takeover: bool = False, own: Lease | None = None) -> None:
        """Take the lease (write lock held, nothing queued), recompute the counters, roll, start the heartbeat."""
        self._stop_heartbeat()
        w = self._writer_conn()
        now = logfile.now_us()
        try:
            with w.transaction():
                cur = w.cursor()
                new = lease.take(cur, self.subject, now, self.lease_ttl, takeover=takeover, own=own,
                                 endpoints=self._endpoints)
                lease.declare(cur, new.epoch)  # the fencing trigger checks the generation row too
                c = Counters(cur)
                c.stamp(cur, new.epoch, now)
        except Conflict as e:
            if e.hresult == ERROR_BUSY:
                with contextlib.suppress(Exception):
                    self._seen_epoch = int(w.execute("SELECT epoch FROM writer_lease").fetchone()[0])
            raise
        except Exception as e:
            raise as_certsrv(self.url, e) from None
        with self._cond:
            assert not self._queue, "a lease is taken with nothing queued"
            self._next_lsn = c.last_lsn + 1
            self._appended_lsn = self._committed_lsn = c.last_lsn
            self._gen, self._gen_first, self._gen_size = c.gen, c.first, c.size
            self._ids = c.merged_ids(self._ids)
            self.lease = new
            self._seen_epoch = new.epoch
            was = self._role
            self._role, self._recover = WRITER, None
            self._round += 1
            self._cond.notify_all()
        # Each heartbeat reports about its own lease: a stale one (halted, still finishing a beat) changes nothing.
        self._heartbeat = Heartbeat(self.url, new, self.lease_ttl / 3, lambda e: self._demote(e, new),
                                    lambda e: self._heartbeat_lost(e, new))
        self._heartbeat.start()
        if was != WRITER:
            self._notify(WRITER)

    def _stop_heartbeat(self, *, wait: bool = True) -> None:
        hb, self._heartbeat = self._heartbeat, None
        if hb is not None:
            if wait:
                hb.stop()
            else:
                hb.halt()

    # ---------------------------------------------------------------- fenced: writer -> standby

    def _demote(self, error: CertSrvError, held: Lease | None) -> None:
        """``held`` was superseded (the heartbeat's thread, or a commit's): become a standby."""
        refusal = self._not_writer()
        with self._cond:
            if held != self.lease:
                return  # about a lease this store no longer holds (a newer take)
            self._demote_locked(error, refusal)

    def _demote_locked(self, error: CertSrvError, refusal: NotWriter) -> None:
        """With ``_cond`` held: role standby, every queued record refused (never sent: nothing written)."""
        if self._role != WRITER:
            return
        for it in self._queue:
            self._errors[it.seq] = refusal
        self._queue = []
        self._role, self._recover = STANDBY, None
        self._round += 1
        self._stop_heartbeat(wait=False)  # it may be the calling thread, or waiting for this lock
        log.error("%s; this node is a standby now", error)
        self._cond.notify_all()
        self._notify(STANDBY)

    def _not_writer(self) -> NotWriter:
        """The refusal of a write on this node, naming the writer (as the database says now, if it answers)."""
        try:
            info = self.writer_info(patient=False)
        except Exception:  # the database is away: name what this node last knew
            info = {"holder": "", "epoch": self._seen_epoch, "endpoints": [], "renewed_age_s": None}
        return NotWriter.naming(self.subject, info)

    # ---------------------------------------------------------------- losing the connection

    def _heartbeat_lost(self, error: Exception, held: Lease) -> None:
        """The heartbeat could not reach the server: check the writer connection now (a failover?)."""
        with self._cond:
            if self._role == WRITER and self._recover is None and held == self.lease:
                self._recover, self._lost_at = RECONNECT, time.monotonic()
                self._start_recoverer()

    def _start_recoverer(self) -> None:
        """With ``_cond`` held: start the background recovery unless it runs (it ends under ``_cond`` too)."""
        if self._recoverer is None:
            self._recoverer = threading.Thread(target=self._recover_loop, name="certsrv-pg-recover", daemon=True)
            self._recoverer.start()

    def _recover_loop(self) -> None:
        """Reconnect in the background while no write does it (an idle writer keeps its lease)."""
        delay = 0.05
        while True:
            with self._cond:
                if self._closing or self._recover is None or self._role != WRITER:
                    self._recoverer = None
                    return
            try:
                with self._write_lock:
                    self._recover_once_locked()
            except CertSrvError as e:
                log.debug("reconnect attempt failed: %s", e)
            except Exception as e:  # never let the thread die with the store still needing it
                log.warning("reconnect attempt failed: %s", e)
            time.sleep(delay)
            delay = min(delay * 2, max(self.lease_ttl / 6, 0.1))

    def _ensure_writer_locked(self) -> int:
        """Before a record is queued (write lock held): refuse on a standby, finish a pending reconnect or
        resync (waiting up to three lease times for a server), and return the pipeline's round."""
        deadline: float | None = None
        while True:
            self._check_open()
            with self._cond:
                role, need, rnd = self._role, self._recover, self._round
            if role != WRITER:
                raise self._not_writer()
            if need is None:
                return rnd
            try:
                self._recover_once_locked()
            except CertSrvError as e:
                if not connection_lost(e):
                    raise
                if deadline is None:
                    deadline = self._lost_at + RECONNECT_TTLS * self.lease_ttl
                if time.monotonic() >= deadline or self._closing:  # closing: stop waiting for a server
                    raise Unavailable(RPC_S_CALL_FAILED_DNE, self.subject,
                                      f"no writable PostgreSQL server answers ({e.message}); this write was not "
                                      "sent, nothing was written: retry it once the database is back") from None
                time.sleep(0.1)

    def _recover_once_locked(self) -> None:
        """One attempt at what ``_recover`` asks (write lock held); raises a connection error to retry."""
        with self._cond:
            need = self._recover
        if need is None or self._role != WRITER:
            return
        self._quiesce()  # nothing may use the writer connection while it is replaced
        try:
            if need == RESYNC:
                self._resync_locked()
            else:
                self._reconnect_locked()
        except Fenced as e:
            self._demote(e, self.lease)
        except CertSrvError as e:
            if connection_lost(e):
                with self._cond:
                    if self._recover == RESYNC:
                        self._recover, self._lost_at = RECONNECT, time.monotonic()
            raise

    def _resync_locked(self) -> None:
        """A commit failed on a sound connection: the counters again from the database (the lease checked)."""
        held = self.lease
        assert held is not None
        w = self._writer_conn()
        try:
            with w.transaction():
                cur = w.cursor()
                lease.check(cur, self.subject, held, logfile.now_us())
                c = Counters(cur)
        except CertSrvError:
            raise
        except Exception as e:
            raise as_certsrv(self.url, e) from None
        with self._cond:
            self._next_lsn = c.last_lsn + 1
            self._appended_lsn = self._committed_lsn = c.last_lsn
            self._gen, self._gen_first, self._gen_size = c.gen, c.first, c.size
            self._ids = c.merged_ids(self._ids)
            self._recover = None
            self._round += 1
            self._cond.notify_all()

    def _reconnect_locked(self) -> None:
        """The writer connection is gone (or the heartbeat's was): probe it; else reconnect through the URL's
        hosts and re-take this node's own lease (epoch + 1, a new generation, counters recomputed)."""
        w = self._writer
        if w is not None and not w.closed and not w.broken:
            with contextlib.suppress(Exception):
                if not w.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    with self._cond:  # the writer's own connection is sound: only the heartbeat's failed
                        self._recover = None
                        self._cond.notify_all()
                    return
        with contextlib.suppress(Exception):
            if w is not None:
                w.close()
        self._writer = None
        self._writer_conn()
        own = self.lease
        try:
            self._take_locked(own=own)
        except Conflict as e:
            if e.hresult != ERROR_BUSY:
                raise
            self._demote(e, own)  # another node took the lease while this one was away
            return
        log.warning("%s: reconnected; lease re-taken as epoch %d, counters recomputed from the database",
                    self.subject, self.epoch)

    # ---------------------------------------------------------------- role change callbacks

    def _notify(self, role: str) -> None:
        """Tell the callbacks (in order, from one dispatcher thread: never under the store's locks)."""
        if not self._callbacks:
            return
        self._events.put(role)
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(target=self._dispatch, name="certsrv-pg-role", daemon=True)
            self._dispatcher.start()

    def _dispatch(self) -> None:
        while (role := self._events.get()) is not None:  # None: the store closed
            for cb in list(self._callbacks):
                try:
                    cb(role)
                except Exception:  # a callback's failure must not stop the others
                    log.exception("role change callback failed")
