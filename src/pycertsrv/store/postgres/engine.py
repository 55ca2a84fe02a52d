"""The CA database on PostgreSQL (issue 12): the redo log as rows, one fenced writer, group commit.

- ``PgStore.create(url, name)`` / ``PgStore.open(url)``: the schema must exist at this release's version
  (``certsrv init`` / ``certsrv db upgrade`` create it; opening never runs DDL).
- One writer per CA: opening takes the lease (:mod:`.lease`) and computes every counter from the database
  (next LSN, generation, request id, CRL number): never from a process-local value alone.
- ``transaction()``: row images collected under the write lock, which assigns the next LSN (gapless, in
  commit order: issue 12 measured that sequences give neither). Committers then share PostgreSQL
  transactions (group commit): one of them commits every queued record in ONE transaction that checks
  the lease epoch, inserts the log rows and applies the row images. If that transaction fails, the LSNs
  handed out are not committed and the store refuses writes until it is reopened (which recomputes
  them from the database): never a gap, never a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import (
    E_INVALIDARG,
    ERROR_FILE_EXISTS,
    ERROR_INVALID_STATE,
    CertSrvError,
    Conflict,
    InvalidArgument,
    NotFound,
    StorageError,
)
from .. import archivemark, logfile, schema
from ..health import Health
from ..interface import Commit, Generation
from ..logfile import Op, encode_payload
from ..options import StoreOptions, initial_meta
from ..report import RecoveryReport
from ..sqlite.checkpoint import Checkpoint
from ..transaction import Transaction
from . import ddl, lease, sql
from .connect import as_certsrv as _as_certsrv
from .connect import connect, describe
from .exports import ExportedGeneration, PgSnapshot
from .reads import PgReads
from .streams import PgGenerationStream, PgSnapshotStream, scratch_dir

log = logging.getLogger("pycertsrv.store.postgres")
FAILED_COMMIT = "failed: postgresql commit refused, restart required"


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


class PgStore(PgReads):
    """An open CA database on PostgreSQL, held by this process as its writer."""

    engine = "postgresql"

    def __init__(self, url: str, options: StoreOptions, home: Path | None = None,
                 lease_ttl: float = lease.LEASE_TTL) -> None:
        self.url = url
        self.lease_ttl = lease_ttl
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
        self._failed: CertSrvError | None = None
        self._next_lsn = 1
        self._appended_lsn = 0
        self._committed_lsn = 0
        self._gen = 1
        self._gen_first = 1
        self._gen_size = logfile.HEADER_SIZE
        self._ids: dict[str, int] = {}
        self._closed = True

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, url: str, name: str, options: StoreOptions | None = None, *, home: Path | None = None,
               identity: str | None = None, lineage: str | None = None,
               lease_ttl: float = lease.LEASE_TTL) -> PgStore:
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
                conn.execute("INSERT INTO log_generation (gen, first_lsn, created_us) VALUES (1, 1, %s)",
                             (logfile.now_us(),))
        except Exception as e:
            raise _as_certsrv(url, e) from None
        finally:
            conn.close()
        return cls.open(url, options, home=home, lease_ttl=lease_ttl)

    @classmethod
    def open(cls, url: str, options: StoreOptions | None = None, *, home: Path | None = None,
             takeover: bool = False, lease_ttl: float = lease.LEASE_TTL) -> PgStore:
        """Open ``url``'s CA database as its writer (takes the lease; see :mod:`.lease`).

        :param takeover: take the lease even from a live writer (which is fenced at its next commit).
        :param lease_ttl: a lease not renewed for this many seconds may be taken by another node; this
            writer renews its own every third of it.
        """
        store = cls(url, options or StoreOptions(), home, lease_ttl)
        try:
            store._open(takeover)
        except BaseException:
            store._close_handles()
            raise
        return store

    def _open(self, takeover: bool) -> None:
        self._writer = connect(self.url)
        w = self._writer
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
            self.identity, self.name = meta["identity"], meta.get("name", "")
            with w.transaction():
                cur = w.cursor()
                self.lease = lease.take(cur, self.subject, logfile.now_us(), self.lease_ttl, takeover=takeover)
                # issue 12: every counter comes from the database once the lease is ours.
                last = cur.execute("SELECT coalesce(max(lsn), 0) FROM log_record").fetchone()[0]
                gen, first = cur.execute(
                    "SELECT gen, first_lsn FROM log_generation ORDER BY gen DESC LIMIT 1").fetchone()
                size = cur.execute("SELECT coalesce(sum(length(payload)), 0), count(*) FROM log_record "
                                   "WHERE gen = %s", (gen,)).fetchone()
                for t in ("request", "crl"):
                    k = schema.table(t).key[0]
                    self._ids[t] = int(cur.execute(f"SELECT coalesce(max({k}), 0) FROM {t}").fetchone()[0])
                if meta.get("circular_logging") != self.options.circular_flag:
                    cur.execute("UPDATE _meta SET value = %s WHERE key = 'circular_logging'",
                                (self.options.circular_flag,))
        except Exception as e:
            raise _as_certsrv(self.url, e) from None
        self._next_lsn = int(last) + 1
        self._appended_lsn = self._committed_lsn = int(last)
        self._gen, self._gen_first = int(gen), int(first)
        self._gen_size = logfile.HEADER_SIZE + int(size[0]) + int(size[1]) * logfile.REC_SIZE
        self._closed = False
        self._heartbeat = lease.Heartbeat(self.url, self.lease, self.lease_ttl / 3, self._fenced)
        self._heartbeat.start()

    def _fenced(self, error: CertSrvError) -> None:
        """The heartbeat found the epoch superseded: refuse writes from now on (the database would anyway)."""
        with self._cond:
            if self._failed is None:
                self._failed = error
                log.error("%s", error)
            self._cond.notify_all()

    def close(self) -> None:
        """Release the lease and every connection."""
        if self._closed:
            return
        self._closed = True
        hb = getattr(self, "_heartbeat", None)
        if hb is not None:
            hb.stop()
        with contextlib.suppress(Exception):
            if self._failed is None and self.lease is not None and self._writer is not None:
                with self._write_lock:
                    self._quiesce()
                    with self._cond, self._writer.transaction():
                        lease.release(self._writer.cursor(), self.lease)
        self._close_handles()

    def _close_handles(self) -> None:
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
        self._check_open()
        if self._failed is not None:
            raise self._failed

    # ---------------------------------------------------------------- writes

    def transaction(self) -> Transaction:
        """Collect row images; on exit the record is committed in PostgreSQL (group commit)."""
        self._check_writable()
        return Transaction(self)

    def commit(self, ops: Sequence[Op]) -> Commit:
        """Append one record holding ``ops`` and commit it with its row images (the Engine call)."""
        if not ops:
            raise InvalidArgument(E_INVALIDARG, "store", "a commit needs at least one row operation")
        tx = Transaction(self)
        tx.ops = list(ops)
        with tx:
            pass
        assert tx.lsn is not None
        return Commit(tx.lsn, True)

    def _log_locked(self, tx: Transaction) -> int:
        """Assign the next LSN to ``tx`` and queue it (the write lock is held); returns the LSN."""
        self._check_writable()
        lsn = self._next_lsn
        try:
            payload = encode_payload(tx.ops)
        except (ValueError, TypeError) as e:
            raise InvalidArgument(E_INVALIDARG, "store", f"cannot log the transaction: {e}") from None
        rec = logfile.encode_record(lsn, logfile.now_us(), payload)
        size = len(rec)
        if self._gen_size + size > self.options.log_size and self._gen_size > logfile.HEADER_SIZE:
            self._queue_roll()
        crc, _, _, ts = logfile.REC.unpack_from(rec)
        with self._cond:
            self._seq += 1
            self._queue.append(_Item(self._seq, lsn, self._gen, ts, crc, payload, tx.ops))
        self._gen_size += size
        self._next_lsn = lsn + 1
        self._appended_lsn = lsn
        tx.lsn = lsn
        return lsn

    def _queue_roll(self) -> int:
        """Queue the start of the next generation at the next LSN (write lock held)."""
        with self._cond:
            self._seq += 1
            self._queue.append(_Item(self._seq, self._next_lsn, self._gen + 1, logfile.now_us()))
            seq = self._seq
        self._gen += 1
        self._gen_first = self._next_lsn
        self._gen_size = logfile.HEADER_SIZE
        return seq

    def _commit_wait(self, lsn: int) -> bool:
        """Return once record ``lsn`` is committed (its row images with it: always True)."""
        self._wait(lambda: self._committed_lsn >= lsn)
        return True

    def _wait_seq(self, seq: int) -> None:
        """Return once queue item ``seq`` (a record or a roll) is committed."""
        self._wait(lambda: self._committed_seq >= seq)

    def _wait(self, done: Callable[[], bool]) -> None:
        """Wait for ``done``; the first waiter finding no commit running commits everything queued."""
        with self._cond:
            while not done():
                if self._failed is not None:
                    raise self._failed
                if not self._flushing and self._queue:
                    self._flush_locked()
                    continue
                self._cond.wait()

    def _flush_locked(self) -> None:
        """Commit every queued item in ONE PostgreSQL transaction (called with ``_cond`` held)."""
        batch, self._queue = self._queue, []
        self._flushing = True
        error: CertSrvError | None = None
        self._cond.release()
        try:
            self._commit_batch(batch)
        except CertSrvError as e:
            error = e
        except Exception as e:  # psycopg errors, a lost connection
            error = _as_certsrv(self.url, e)
        finally:
            self._cond.acquire()
            self._flushing = False
            if error is None:
                self._committed_seq = batch[-1].seq
                recs = [i.lsn for i in batch if i.ops is not None]
                if recs:
                    self._committed_lsn = recs[-1]
            else:
                # The LSNs handed out were not committed: no later record may take the next one in this
                # process (a gap); writes stop until a reopen recomputes the counters from the database.
                self._failed = StorageError(error.hresult, error.function,
                                            f"{error.message}; this write was NOT committed")
                log.error("postgresql commit failed; writes stop until the store is reopened: %s", error)
            self._cond.notify_all()

    def _commit_batch(self, batch: list[_Item]) -> None:
        assert self.lease is not None
        w = self._writer
        # Pipeline mode: every statement goes out at once, then one sync and the COMMIT (2 round trips).
        with w.pipeline() as pipe, w.transaction():
            lease_cur = w.cursor()
            lease.renew(lease_cur, self.lease, logfile.now_us())
            cur = w.cursor()
            self._write_batch(cur, batch)
            pipe.sync()
            # Fencing: checked before COMMIT; raising here rolls back everything this batch wrote.
            lease.verify(lease_cur, self.subject, self.lease)

    def _write_batch(self, cur: Any, batch: list[_Item]) -> None:
        """The log rows, generation rows and row images of a batch, in queue order."""
        recs: list[tuple[int, int, int, int, bytes]] = []
        ops: list[list[Op]] = []
        for it in batch:
            if it.ops is None:
                if recs:  # rows of the closing generation go in before it closes
                    cur.executemany(sql.INSERT_LOG, recs)
                    recs = []
                cur.execute("UPDATE log_generation SET closed_us = %s WHERE gen = %s", (it.ts_us, it.gen - 1))
                cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us) VALUES (%s, %s, %s)",
                            (it.gen, it.lsn, it.ts_us))
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
        target = self._appended_lsn
        with self._cond:
            while self._committed_lsn < target and self._failed is None:
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

    # ---------------------------------------------------------------- log management

    def roll(self) -> int:
        """Close the current generation and start the next; returns the closed number."""
        self._check_writable()
        with self._write_lock:
            closed = self._gen
            seq = self._queue_roll()
        self._wait_seq(seq)
        return closed

    roll_log = roll

    def generations(self) -> list[Generation]:
        """Every generation still in the database, with LSN range and size, oldest first."""
        self._check_open()
        rows = self._reader().execute(
            "SELECT g.gen, g.first_lsn, g.created_us, g.closed_us, count(r.lsn), coalesce(sum(length(r.payload)), 0)"
            " FROM log_generation g LEFT JOIN log_record r ON r.gen = g.gen GROUP BY g.gen ORDER BY g.gen").fetchall()
        out = []
        for gen, first, created, closed, n, nbytes in rows:
            size = logfile.HEADER_SIZE + int(nbytes) + int(n) * logfile.REC_SIZE
            out.append(Generation(int(gen), int(first), int(first) + int(n) - 1, int(created), size,
                                  closed is not None))
        return out

    @property
    def current_generation(self) -> int:
        """Number of the generation being written."""
        return self._gen

    @property
    def log_position(self) -> tuple[int, int, int]:
        """``(generation being written, its first LSN, last LSN appended)``."""
        with self._write_lock:
            return self._gen, self._gen_first, self._appended_lsn

    @property
    def applied_lsn(self) -> int:
        """Highest LSN committed (log rows and row images commit together)."""
        return self._committed_lsn

    @property
    def circular_logging(self) -> bool:
        """Whether old generations are deleted automatically (no incrementals)."""
        return self.options.circular_logging

    def checkpoint(self) -> Checkpoint:
        """Where crash recovery would start: nothing to make durable (row images commit with their records),
        so every committed LSN is "checkpointed" and only the open generation is needed."""
        self._check_open()
        with self._write_lock:
            self._wait_applied_all()
            return Checkpoint(self._committed_lsn, self._gen, logfile.now_us())

    @property
    def last_checkpoint(self) -> Checkpoint:
        """Always the committed LSN (see :meth:`checkpoint`)."""
        return Checkpoint(self._committed_lsn, self._gen, logfile.now_us())

    def health(self) -> Health:
        """``ok``, or failed (a commit refused: fenced, server lost) until the store is reopened."""
        with self._cond:
            failed = self._failed
        if failed is None:
            return Health()
        return Health(FAILED_COMMIT, failed.message, None, 0, None, [], None)

    def log_space(self) -> dict[int, int]:
        """Bytes each kept generation takes (its exported ``edb`` size), by number."""
        return {g.generation: g.size for g in self.generations()}

    def truncate(self, below: int) -> list[int]:
        """Delete the log rows of generations below ``below`` (never the current one)."""
        self._check_writable()
        if below > self._gen:
            raise InvalidArgument(E_INVALIDARG, "truncate",
                                  f"generation {below:08X} is past the current one ({self._gen:08X})")
        if self.options.archiving:
            present = [g.generation for g in self.generations()]
            if present:  # issue 13: never delete a generation not yet archived
                below = min(below, archivemark.keep_floor(self, min(present)))
        assert self.lease is not None
        with self._write_lock:
            self._quiesce()
        with self._write_lock, self._cond:  # no commit can start while this transaction uses the connection
            w = self._writer
            try:
                with w.transaction():
                    cur = w.cursor()
                    lease.check(cur, self.subject, self.lease, logfile.now_us())
                    gens = [int(r[0]) for r in cur.execute(
                        "SELECT gen FROM log_generation WHERE gen < %s AND gen <> %s ORDER BY gen",
                        (below, self._gen)).fetchall()]
                    cur.execute("DELETE FROM log_record WHERE gen = ANY(%s)", (gens,))
                    cur.execute("DELETE FROM log_generation WHERE gen = ANY(%s)", (gens,))
            except CertSrvError:
                raise
            except Exception as e:
                raise _as_certsrv(self.url, e) from None
        return gens

    truncate_logs = truncate

    # ---------------------------------------------------------------- reads

    def integrity_check(self) -> str:
        """``"ok"`` when the log is gapless, every CRC matches and the tables are at its last LSN."""
        from .exports import check_log

        return check_log(self._reader())

    def log_records(self, gen: int) -> Iterator[logfile.Record]:
        """The records of generation ``gen`` in LSN order (``offset`` is the position in its edb file)."""
        pos = logfile.HEADER_SIZE
        for lsn, ts, payload in self._rows(
                "SELECT lsn, ts_us, payload FROM log_record WHERE gen = %s ORDER BY lsn", (gen,)):
            yield logfile.Record(int(lsn), int(ts), bytes(payload), pos)
            pos += logfile.REC_SIZE + len(payload)

    @property
    def database_name(self) -> str:
        """The database file's name in a backup set (``<CA>.db``, as the SQLite engine names it)."""
        from ..sqlite import db_file_name  # the set's file name is the SQLite engine's (a set looks the same)

        return str(db_file_name(self.name))

    def snapshot(self, dest: Path, *, durable: bool = True) -> PgSnapshot:
        """A consistent copy of the database as a SQLite file (the SQLite engine's format)."""
        from .exports import snapshot_to_sqlite

        self._check_open()
        conn = connect(self.url)
        try:
            return snapshot_to_sqlite(conn, Path(dest), durable=durable)
        finally:
            conn.close()

    def open_snapshot(self) -> PgSnapshotStream:
        """The tables at one LSN as a SQLite file's bytes (one REPEATABLE READ transaction)."""
        import shutil

        d = scratch_dir(self.home)
        try:
            info = self.snapshot(d / self.database_name, durable=False)
            return PgSnapshotStream(self.database_name, info.path, info.lsn, info.generation)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def export_generation(self, gen: int, dest_dir: Path) -> Path:
        """Write generation ``gen`` as an ``edbXXXXXXXX.log`` file byte-compatible with the SQLite engine's."""
        return self._export(gen, Path(dest_dir), durable=True).path

    def _export(self, gen: int, dest_dir: Path, *, durable: bool) -> ExportedGeneration:
        from .exports import export_generation

        self._check_open()
        try:
            return export_generation(self._reader(), self.identity, gen, dest_dir, durable=durable)
        except CertSrvError:
            raise
        except Exception as e:
            raise _as_certsrv(self.url, e) from None

    def open_generation(self, number: int) -> PgGenerationStream:
        """Generation ``number`` as its ``edb`` file's bytes; NotFound when no longer kept."""
        import shutil

        self._check_open()
        if not self._rows("SELECT 1 FROM log_generation WHERE gen = %s", (number,)):
            raise NotFound(None, logfile.log_name(number), "this log generation is no longer kept")
        d = scratch_dir(self.home)
        try:
            # A scratch copy, deleted when the stream closes: no fsync (durable=False). Its LSN range comes
            # from the export itself, which read every record (a listing taken before could be older).
            e = self._export(number, d, durable=False)
            return PgGenerationStream(e.path.name, e.path, number, e.first_lsn, e.last_lsn)
        finally:
            shutil.rmtree(d, ignore_errors=True)


