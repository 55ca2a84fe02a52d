"""The CA database on PostgreSQL (issue 12): the redo log as rows, one fenced writer, group commit.

- ``PgStore.create(url, name)`` / ``PgStore.open(url)``: the schema must exist at this release's version
  (``certsrv init`` / ``certsrv db upgrade`` create it; opening never runs DDL).
- One writer per CA: opening takes the lease (:mod:`.lease`) and computes every counter from the database
  (next LSN, generation, request id, CRL number): never from a process-local value alone. With
  ``standby=True`` a live writer elsewhere makes this node a standby instead (issue 14, :mod:`.node`).
- ``transaction()``: row images collected under the write lock, which assigns the next LSN (gapless, in
  commit order: issue 12 measured that sequences give neither). Committers then share PostgreSQL
  transactions (group commit): one of them commits every queued record in ONE transaction that checks
  the lease epoch, inserts the log rows and applies the row images. If that transaction fails, none of
  its LSNs is committed and every record queued behind it is refused unsent; the counters are then
  recomputed from the database before the next record (:mod:`.node`): never a gap, never a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import (
    E_INVALIDARG,
    ERROR_BUSY,
    ERROR_FILE_EXISTS,
    ERROR_INVALID_STATE,
    RPC_S_CALL_FAILED,
    RPC_S_CALL_FAILED_DNE,
    CertSrvError,
    Conflict,
    InvalidArgument,
    NotFound,
    NotWriter,
    OutcomeUnknown,
    Unavailable,
)
from .. import archivemark, logfile, schema
from ..interface import Commit
from ..logfile import Op, encode_payload
from ..options import StoreOptions, initial_meta
from ..report import RecoveryReport
from ..transaction import Transaction
from . import ddl, lease, sql
from .claims import PgClaims
from .connect import Fenced, as_certsrv, connect, connection_lost, describe, idle_killed
from .logs import PgLog
from .node import RECONNECT, RESYNC, STANDBY, WRITER, PgNode
from .reads import PgReads

log = logging.getLogger("pycertsrv.store.postgres")


@dataclass
class _Item:
    """A queued write: a record (``ops`` set) or the start of a generation (``ops`` None)."""

    seq: int
    lsn: int
    gen: int
    ts_us: int
    crc: int = 0
    payload: bytes = b""
    ops: list[Op] | None = None


@dataclass
class _Failure:
    """How a failed batch ends: what its own records get, what the records queued behind it get."""

    batch: CertSrvError
    rest: CertSrvError
    then: str | None  # RECONNECT, RESYNC, or None (fenced: the node becomes a standby)
    fenced: CertSrvError | None = None  # why, when fenced
    committed: bool = False  # the batch did commit (found in the database once its connection was lost)


class PgStore(PgLog, PgNode, PgClaims, PgReads):
    """An open CA database on PostgreSQL: the writer (holds the lease) or a standby (reads; see :mod:`.node`)."""

    engine = "postgresql"

    def __init__(self, url: str, options: StoreOptions, home: Path | None = None,
                 lease_ttl: float | None = None) -> None:
        self.url = url
        self.lease_ttl = float(options.lease_ttl if lease_ttl is None else lease_ttl)
        self.subject = describe(url)
        self.options = options
        self.home = Path(home).resolve() if home is not None else None
        self.name = ""
        self.identity = ""
        self.recovery = RecoveryReport()  # nothing to recover at open: records commit with their row images
        self.lease: lease.Lease | None = None
        self._write_lock = threading.RLock()
        self._cond = threading.Condition()
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._writer: Any = None
        self._queue: list[_Item] = []
        self._seq = 0
        self._committed_seq = 0
        self._flushing = False
        self._errors: dict[int, CertSrvError] = {}  # queue item seq -> why it was not committed
        self._round = 0  # +1 at every failure, take or resync: a record computed in an older round is redone
        self._role = STANDBY
        self._recover: str | None = None
        self._lost_at = 0.0
        self._seen_epoch = 0
        self._endpoints: list[str] = []
        self._callbacks: list[Callable[[str], None]] = []
        self._events: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._heartbeat: lease.Heartbeat | None = None
        self._recoverer: threading.Thread | None = None
        self._next_lsn = 1
        self._appended_lsn = 0
        self._committed_lsn = 0
        self._gen = 1
        self._gen_first = 1
        self._gen_size = logfile.HEADER_SIZE
        self._ids: dict[str, int] = {}
        self._closed = True
        self._closing = False

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, url: str, name: str, options: StoreOptions | None = None, *, home: Path | None = None,
               identity: str | None = None, lineage: str | None = None,
               lease_ttl: float | None = None) -> PgStore:
        """Create the schema (migrations) and an empty CA database in ``url``, then open it.

        :param identity: the database identity (hex); a new random one when None.
        :param lineage: the archive lineage (issue 13); a new one when None.
        """
        import secrets

        ident = identity or secrets.token_bytes(16).hex()
        conn = connect(url)
        try:
            with conn.transaction():
                ddl.upgrade(conn, logfile.now_us())
                row = conn.execute("SELECT value FROM _meta WHERE key = 'identity'").fetchone()
                if row is not None:
                    raise Conflict(ERROR_FILE_EXISTS, describe(url),
                                   f"this database holds a CA already (identity {row[0]}); use another "
                                   "database or drop it first")
                meta = {"schema_version": str(schema.SCHEMA_VERSION), **initial_meta(ident, name, options)}
                conn.cursor().executemany("INSERT INTO _meta (key, value) VALUES (%s, %s)", list(meta.items()))
                conn.cursor().executemany("INSERT INTO setting (name, value) VALUES (%s, %s)",
                                          archivemark.initial_settings(lineage))
                epoch = conn.execute("SELECT epoch FROM writer_lease WHERE id = 1").fetchone()[0]
                lease.declare(conn, int(epoch))
                conn.execute("INSERT INTO log_generation (gen, first_lsn, created_us, epoch) VALUES (1, 1, %s, %s)",
                             (logfile.now_us(), int(epoch)))
        except Exception as e:
            raise as_certsrv(url, e) from None
        finally:
            conn.close()
        return cls.open(url, options, home=home, lease_ttl=lease_ttl)

    @classmethod
    def open(cls, url: str, options: StoreOptions | None = None, *, home: Path | None = None,
             takeover: bool = False, lease_ttl: float | None = None, standby: bool = False) -> PgStore:
        """Open ``url``'s CA database as its writer (takes the lease; see :mod:`.lease`).

        :param takeover: take the lease even from a live writer (which is fenced at its next commit).
        :param lease_ttl: a lease not renewed for this many seconds may be taken by another node; this
            writer renews its own every third of it. Default: ``options.lease_ttl`` (``[store] lease_ttl``).
        :param standby: while another live writer holds the lease, open as a standby (reads work, writes raise
            NotWriter; :meth:`try_promote` takes the lease once it expires) instead of refusing with
            ERROR_BUSY. A free lease is taken all the same (role writer).
        """
        store = cls(url, options or StoreOptions(), home, lease_ttl)
        try:
            store._open(takeover, standby)
        except BaseException:
            store._close_handles()
            raise
        return store

    def _open(self, takeover: bool, standby: bool) -> None:
        w = self._writer_conn()
        try:
            version = ddl.current_version(w)
            if version != ddl.PG_SCHEMA_VERSION:
                what = ("holds no pycertsrv schema; run certsrv init --database URL" if version == 0 else
                        f"has schema version {version}, this release needs {ddl.PG_SCHEMA_VERSION}; " +
                        ("run certsrv db upgrade" if version < ddl.PG_SCHEMA_VERSION
                         else "use the release that created it"))
                raise CertSrvError(ERROR_INVALID_STATE, self.subject, f"the database {what}; nothing was written")
            meta = dict(w.execute("SELECT key, value FROM _meta").fetchall())
            if "identity" not in meta:
                raise NotFound(None, self.subject, "no CA in this database; run certsrv init --database URL")
        except Exception as e:
            raise as_certsrv(self.url, e) from None
        self.identity, self.name = meta["identity"], meta.get("name", "")
        self._closed = False
        with self._write_lock:
            try:
                self._take_locked(takeover=takeover)
            except Conflict as e:
                if not standby or e.hresult != ERROR_BUSY:
                    raise
                log.info("%s: another node holds the writer lease; this node is a standby", self.subject)
                return
        if meta.get("circular_logging") != self.options.circular_flag:
            try:
                with w.transaction():  # the node that writes sets it (a standby leaves it to the writer)
                    w.execute("UPDATE _meta SET value = %s WHERE key = 'circular_logging'",
                              (self.options.circular_flag,))
            except Exception as e:
                raise as_certsrv(self.url, e) from None

    def close(self) -> None:
        """Release the lease (when this node is the writer) and every connection."""
        if self._closed:
            return
        self._closing = True  # a write waiting for a server to reconnect to gives up (and the recovery thread)
        with contextlib.suppress(Exception), self._write_lock:
            if self._role == WRITER and self._recover is None and self.lease is not None:
                self._quiesce()
        self._closed = True
        self._stop_heartbeat()
        with contextlib.suppress(Exception):
            if self._role == WRITER and self._recover is None and self.lease is not None and self._writer is not None:
                with self._write_lock, self._cond, self._writer.transaction():
                    lease.release(self._writer.cursor(), self.lease)
        self._events.put(None)
        self._close_handles()

    def _close_handles(self) -> None:
        self._closed = self._closing = True
        self._stop_heartbeat()
        with self._conns_lock:
            for c in self._conns:
                with contextlib.suppress(Exception):
                    c.close()
            self._conns.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_writable(self) -> None:
        """Refuse a write early on a standby (NotWriter naming the writer)."""
        self._check_open()
        if self._role != WRITER:
            raise self._not_writer()

    # ---------------------------------------------------------------- writes

    def transaction(self) -> Transaction:
        """Collect row images; on exit the record is committed in PostgreSQL (group commit)."""
        self._check_writable()
        return Transaction(self)

    def commit(self, ops: Sequence[Op]) -> Commit:
        """Append one record holding ``ops`` and commit it with its row images (the Engine call).

        Raises NotWriter on a standby (or once fenced), OutcomeUnknown (RPC_S_CALL_FAILED) when the connection
        was lost while committing (it may have been written), RPC_S_CALL_FAILED_DNE when nothing was sent.
        """
        if not ops:
            raise InvalidArgument(E_INVALIDARG, "store", "a commit needs at least one row operation")
        tx = Transaction(self)
        tx.ops = list(ops)
        with tx:
            pass
        assert tx.lsn is not None
        return Commit(tx.lsn, True)

    def _log_locked(self, tx: Transaction) -> int:
        """Assign the next LSN to ``tx`` and queue it (the write lock is held); returns its queue ticket."""
        try:
            payload = encode_payload(tx.ops)
        except (ValueError, TypeError) as e:
            raise InvalidArgument(E_INVALIDARG, "store", f"cannot log the transaction: {e}") from None
        while True:
            rnd = self._ensure_writer_locked()
            lsn = self._next_lsn
            rec = logfile.encode_record(lsn, logfile.now_us(), payload)
            size = len(rec)
            roll = self._gen_size + size > self.options.log_size and self._gen_size > logfile.HEADER_SIZE
            crc, _, _, ts = logfile.REC.unpack_from(rec)
            with self._cond:
                if self._round != rnd:
                    continue  # a failure or a take since the check: the counters changed, compute again
                if roll:
                    self._seq += 1
                    self._queue.append(_Item(self._seq, lsn, self._gen + 1, ts))
                self._seq += 1
                self._queue.append(_Item(self._seq, lsn, self._gen + roll, ts, crc, payload, tx.ops))
                seq = self._seq
            if roll:
                self._gen, self._gen_first, self._gen_size = self._gen + 1, lsn, logfile.HEADER_SIZE
            self._gen_size += size
            self._next_lsn = lsn + 1
            self._appended_lsn = lsn
            tx.lsn = lsn
            return seq

    def _queue_roll(self) -> tuple[int, int]:
        """Queue the start of the next generation at the next LSN (write lock held); (closed number, ticket)."""
        while True:
            rnd = self._ensure_writer_locked()
            with self._cond:
                if self._round != rnd:
                    continue
                self._seq += 1
                self._queue.append(_Item(self._seq, self._next_lsn, self._gen + 1, logfile.now_us()))
                seq = self._seq
            closed = self._gen
            self._gen += 1
            self._gen_first = self._next_lsn
            self._gen_size = logfile.HEADER_SIZE
            return closed, seq

    def _commit_wait(self, ticket: int) -> bool:
        """Return once the record of ``ticket`` is committed (its row images with it: always True), or raise
        why it was not (NotWriter, OutcomeUnknown, RPC_S_CALL_FAILED_DNE, a refusal of the database)."""
        self._wait_seq(ticket)
        return True

    def _wait_seq(self, seq: int) -> None:
        """Return once queue item ``seq`` (a record or a roll) is committed; raise its error if it was not."""
        with self._cond:
            while True:
                error = self._errors.pop(seq, None)
                if error is not None:
                    raise error
                if self._committed_seq >= seq:
                    return
                if not self._flushing and self._queue:
                    self._flush_locked()
                    continue
                self._cond.wait()

    def _wait(self, done: Callable[[], bool]) -> None:
        """Wait for ``done``; the first waiter finding no commit running commits everything queued."""
        with self._cond:
            while not done():
                if not self._flushing and self._queue:
                    self._flush_locked()
                    continue
                self._cond.wait()

    def _flush_locked(self) -> None:
        """Commit every queued item in ONE PostgreSQL transaction (called with ``_cond`` held)."""
        batch, self._queue = self._queue, []
        self._flushing = True
        held = self.lease
        failure: _Failure | None = None
        self._cond.release()
        try:
            try:
                self._commit_batch(batch)
            except BaseException as e:  # psycopg errors, a lost connection, fencing, an interrupt
                failure = self._failure(e, held, batch)
        finally:
            self._cond.acquire()
            self._flushing = False
            if failure is None or failure.committed:
                self._committed_seq = batch[-1].seq
                recs = [i.lsn for i in batch if i.ops is not None]
                if recs:
                    self._committed_lsn = recs[-1]
            if failure is not None:
                self._failed_locked([] if failure.committed else batch, failure, held)
            self._cond.notify_all()

    def _failure(self, e: BaseException, held: lease.Lease | None, batch: list[_Item]) -> _Failure:
        """Classify a failed batch (outside ``_cond``: naming the writer reads the database)."""
        err = as_certsrv(self.url, e) if isinstance(e, Exception) else CertSrvError(
            ERROR_INVALID_STATE, self.subject, f"interrupted: {type(e).__name__}")
        w = self._writer
        lost = connection_lost(e) or w is None or bool(w.closed) or bool(w.broken)
        if not lost and not isinstance(err, Fenced) and held is not None:
            # Pipeline mode: a statement of a superseded writer can fail before the fencing check does (its LSN
            # already taken by the new writer: a duplicate key). The lease says which it was.
            with contextlib.suppress(Exception):
                epoch = int(w.execute("SELECT epoch FROM writer_lease WHERE id = 1").fetchone()[0])
                if epoch != held.epoch:
                    err = lease.fenced_error(self.subject, held, epoch, "another node")
        unsent = Unavailable(RPC_S_CALL_FAILED_DNE, self.subject,
                             f"a write before this one failed ({err.message}); this one was not sent, nothing was "
                             "written: retry it")
        if isinstance(err, Fenced):
            refusal = self._not_writer()
            return _Failure(refusal, refusal, None, err)
        if lost and (resolved := self._resolve_superseded(held, batch)) is not None:
            assert held is not None
            refusal, committed = resolved
            why = lease.fenced_error(self.subject, held, int(str(refusal.writer.get("epoch", -1))),
                                     str(refusal.writer.get("holder")))
            return _Failure(refusal, refusal, None, why, committed)
        if lost and idle_killed(e):
            # The server ended our session for waiting inside the transaction (this process was frozen past the
            # lease time): COMMIT never reached it, nothing was written. Most likely another node took over.
            refusal = self._not_writer()
            if held is not None and refusal.writer.get("epoch") != held.epoch:
                return _Failure(refusal, refusal, None, lease.fenced_error(
                    self.subject, held, int(str(refusal.writer.get("epoch", -1))), str(refusal.writer.get("holder"))))
            dne = Unavailable(RPC_S_CALL_FAILED_DNE, self.subject,
                              f"the server ended this write's transaction unfinished ({err.message}); nothing was "
                              "written: retry it")
            return _Failure(dne, unsent, RECONNECT)
        if lost:
            # Issue 14: COMMIT may have reached the server (and a synchronous standby) before the connection
            # broke; nobody can tell from here. Never answer "not written" for it.
            unknown = OutcomeUnknown(
                RPC_S_CALL_FAILED, self.subject,
                f"the connection to PostgreSQL was lost while this write was committing ({err.message}): it may "
                "or may not have been written; a submit: retry it with the same request key; a revocation or "
                "another change: check with certsrv view first, then retry if it is not there")
            return _Failure(unknown, unsent, RECONNECT)
        refused = type(err)(err.hresult, err.function,
                            err.message if "nothing was written" in err.message
                            else f"{err.message}; this write was NOT committed")
        return _Failure(refused, unsent, RESYNC)

    def _resolve_superseded(self, held: lease.Lease | None, batch: list[_Item]) -> tuple[NotWriter, bool] | None:
        """After the connection was lost in a commit: if the database answers and the lease is now another
        node's, that commit's transaction is over (the take's UPDATE of the lease row waited for its lock, and
        without the lock its log rows fail the fencing trigger), so whether it committed can be read: its first
        record is in the log with this CRC and payload, or it is not. None when that cannot be told."""
        first = next((i for i in batch if i.ops is not None), None)
        if held is None or first is None:
            return None
        try:
            info = self.writer_info(patient=False)
            if info["epoch"] == held.epoch:
                return None  # still ours: a lost server (a failover), the outcome stays unknown
            rows = self._rows("SELECT crc, payload FROM log_record WHERE lsn = %s", (first.lsn,), patient=False)
        except Exception:
            return None
        committed = bool(rows) and int(rows[0][0]) == first.crc and bytes(rows[0][1]) == first.payload
        return NotWriter.naming(self.subject, info), committed

    def _failed_locked(self, batch: list[_Item], failure: _Failure, held: lease.Lease | None) -> None:
        """With ``_cond`` held: refuse the batch and everything queued behind it, then fix the node's state."""
        for it in batch:
            self._errors[it.seq] = failure.batch
        for it in self._queue:
            self._errors[it.seq] = failure.rest
        self._queue = []
        self._round += 1
        if failure.then is None:
            if held == self.lease and isinstance(failure.batch, NotWriter) and failure.fenced is not None:
                self._demote_locked(failure.fenced, failure.batch)
            return
        if failure.then == RECONNECT:
            log.error("%s: the connection was lost while committing; reconnecting: %s", self.subject,
                      failure.batch.message)
            if self._recover != RECONNECT:
                self._recover, self._lost_at = RECONNECT, time.monotonic()
        elif self._recover is None:
            log.error("%s: a commit was refused; counters are recomputed before the next: %s", self.subject,
                      failure.batch.message)
            self._recover = RESYNC
        self._start_recoverer()

    def _commit_batch(self, batch: list[_Item]) -> None:
        held = self.lease
        assert held is not None
        w = self._writer
        # Pipeline mode: every statement goes out at once, then one sync and the COMMIT (2 round trips).
        with w.pipeline() as pipe, w.transaction():
            lease_cur = w.cursor()
            lease.renew(lease_cur, held, logfile.now_us())
            cur = w.cursor()
            self._write_batch(cur, batch, held.epoch)
            pipe.sync()
            # Fencing: checked before COMMIT; raising here rolls back everything this batch wrote.
            lease.verify(lease_cur, self.subject, held)

    def _write_batch(self, cur: Any, batch: list[_Item], epoch: int) -> None:
        """The log rows, generation rows and row images of a batch, in queue order."""
        recs: list[tuple[int, int, int, int, bytes]] = []
        ops: list[list[Op]] = []
        for it in batch:
            if it.ops is None:
                if recs:  # rows of the closing generation go in before it closes
                    cur.executemany(sql.INSERT_LOG, recs)
                    recs = []
                cur.execute("UPDATE log_generation SET closed_us = %s WHERE gen = %s", (it.ts_us, it.gen - 1))
                cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us, epoch) VALUES (%s, %s, %s, %s)",
                            (it.gen, it.lsn, it.ts_us, epoch))
            else:
                recs.append((it.lsn, it.gen, it.ts_us, it.crc, it.payload))
                ops.append(it.ops)
        if recs:
            cur.executemany(sql.INSERT_LOG, recs)
        if ops:
            sql.apply_batch(cur, ops)
            last = max(i.lsn for i in batch if i.ops is not None)
            cur.execute("UPDATE _meta SET value = %s WHERE key = 'applied_lsn'", (str(last),))

    def _quiesce(self) -> None:
        """With the write lock held: commit what is queued and wait until no commit uses the writer connection."""
        self._wait(lambda: not self._queue and not self._flushing)

    def _wait_applied_all(self) -> None:
        """Wait until every record queued so far is committed or refused (a read then sees their outcome)."""
        with self._cond:
            target, rnd = self._appended_lsn, self._round
            while self._committed_lsn < target and self._round == rnd and (self._queue or self._flushing):
                if not self._flushing and self._queue:
                    self._flush_locked()
                    continue
                self._cond.wait()

    def _next_id(self, table: str) -> int:
        t = schema.table(table)
        if len(t.key) != 1:
            raise InvalidArgument(None, "store", f"{table} has no single integer key")
        with self._write_lock:
            if table not in self._ids:
                self._wait_applied_all()
                self._ids[table] = int(self.max_value(table, t.key[0]) or 0)
            self._ids[table] += 1
            return self._ids[table]
