"""The CA database engine: redo log with group commit, SQLite materialised tables, checkpoint,
soft recovery at open, hard recovery from a backup.

Public interface (the CA and backup layers use nothing else, so a PostgreSQL backend can
sit behind the same names later):

- ``Store.create(home, name)`` / ``Store.open(home)`` — make or open a home's database
  (exclusive ``flock``; open runs soft recovery and reports it in ``store.recovery``).
- ``store.transaction()`` — ``with`` block collecting row images; durable when it exits.
- ``store.get / select / count / max_value`` — reads of applied state.
- ``store.roll_log()`` — close the current generation, return its number.
- ``store.generations()`` — generations with LSN ranges and times.
- ``store.checkpoint()`` — sync SQLite, write ``system/edb.chk``.
- ``store.truncate_logs(below)`` — delete generations below one not needed for recovery.
- ``store.snapshot(dest)`` — consistent copy of SQLite at some LSN, without stopping writers.
- ``hard_recover(db, log_dir, gen_low, gen_high)`` — replay backed-up logs onto a snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_FILE_EXISTS,
    ERROR_FILE_NOT_FOUND,
    ERROR_IO_DEVICE,
    JET_ERR_CHECKPOINT_CORRUPT,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_LOG_FILE_CORRUPT,
    JET_ERR_MISSING_LOG_FILE,
    CertSrvError,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
    StorageError,
)
from ..fsutil import HomeLock, atomic_write, copy_file, create_file, fsync_dir, fsync_file, make_dirs
from . import archivemark, logfile, schema
from . import health as health_mod
from .faults import FaultHandling
from .health import FAILED_DB_SYNC, FAILED_SYNC, disk_full_error, is_disk_full, sync_failed_error
from .replay import Batcher, Op, RecoveryReport, check_chain, encode_payload, read_meta, replay, set_applied

DB_DIR = "db"
LOG_DIR = "logs"
SYSTEM_DIR = "system"
CHECKPOINT_FILE = "edb.chk"
OPS = {"=", "!=", "<", "<=", ">", ">=", "is null", "is not null", "like"}
REPLAY_CACHE_KIB = 65536  # SQLite page cache while replaying (the default 2 MiB thrashes on large logs)
log = logging.getLogger("pycertsrv.store")


@dataclass(frozen=True)
class StoreOptions:
    """Engine settings.

    :param log_size: roll the generation when it would grow past this many bytes.
    :param checkpoint_records: checkpoint after this many applied records (0: only on demand/close).
    :param circular_logging: delete generations below the checkpoint by itself (no incrementals).
    :param retry_interval: seconds between attempts to apply committed records after an apply failed
        (disk full); see :mod:`.health`.
    :param archiving: continuous archiving is on: truncation and circular logging keep every generation
        above the archive watermark (issue 13).
    """

    log_size: int = 8 << 20
    checkpoint_records: int = 20000
    circular_logging: bool = False
    retry_interval: float = 0.5
    archiving: bool = False  # issue 13: never delete a generation not yet archived (see .archivemark)


@dataclass(frozen=True)
class GenerationInfo:
    """A log generation: number, file, LSN range (last is first-1 when empty), times, state."""

    generation: int
    path: Path
    first_lsn: int
    last_lsn: int
    created_us: int
    size: int
    closed: bool


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint: every LSN up to ``lsn`` is durable in SQLite; ``generation`` holds ``lsn+1``."""

    lsn: int
    generation: int
    time_us: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A consistent SQLite copy: the LSN it contains and the generation holding the next record."""

    path: Path
    lsn: int
    generation: int
    size: int


def db_file_name(name: str) -> str:
    """The database file name for a CA name (path-safe)."""
    safe = "".join(c if (c.isalnum() or c in "-_ .") else "_" for c in name).strip(" .") or "ca"
    return f"{safe}.db"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # Relaxed sync is safe: the redo log is the durable record and SQLite is rebuilt from it;
    # NORMAL in WAL mode keeps the file consistent across power loss (it may lose the tail).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def read_checkpoint(path: Path) -> Checkpoint | None:
    """Read ``edb.chk``; None when absent, CorruptData when unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        body = json.dumps(doc["body"], sort_keys=True).encode()
        import zlib

        if zlib.crc32(body) != doc["crc32"]:
            raise ValueError("checksum mismatch")
        b = doc["body"]
        return Checkpoint(int(b["lsn"]), int(b["generation"]), int(b["time_us"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptData(JET_ERR_CHECKPOINT_CORRUPT, path.name, f"checkpoint file is corrupt: {e}") from None


def write_checkpoint(path: Path, cp: Checkpoint, identity: str) -> None:
    """Write ``edb.chk`` atomically with a CRC32 over its body."""
    import zlib

    body = {"lsn": cp.lsn, "generation": cp.generation, "time_us": cp.time_us, "identity": identity}
    raw = json.dumps(body, sort_keys=True).encode()
    atomic_write(path, json.dumps({"body": body, "crc32": zlib.crc32(raw)}, sort_keys=True).encode())


class Transaction:
    """Row images collected inside ``with store.transaction() as tx``; written when the block exits.

    Entering takes the store's write lock (bodies are serialised); a clean exit appends one log
    record under it, then waits outside it until the record is durable and applied. A block that
    raises writes nothing.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.ops: list[Op] = []
        self._overlay: dict[tuple[str, tuple[Any, ...]], list[Any] | None] = {}
        self.lsn: int | None = None
        self.applied = True  # False: committed (durable in the log) but not yet applied to SQLite

    def __enter__(self) -> Transaction:
        self._store._write_lock.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        store = self._store
        try:
            if exc_type is not None or not self.ops:
                return
            lsn = store._log_locked(self)
        finally:
            store._write_lock.release()
        self.applied = store._commit_wait(lsn)
        if not self.applied:
            health_mod.note_unapplied(lsn)

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Store the whole resulting row (missing columns are NULL)."""
        t = schema.table(table)
        image = schema.row_to_image(t, row)
        self.ops.append((table, "p", image))
        self._overlay[(table, tuple([image[i] for i in t.key_positions]))] = image

    def delete(self, table: str, key: Any) -> None:
        """Delete a row by primary key (a scalar or a tuple)."""
        t = schema.table(table)
        k = key if isinstance(key, tuple) else (key,)
        if len(k) != len(t.key):
            raise InvalidArgument(None, "store", f"key for {table} needs {len(t.key)} values")
        self.ops.append((table, "d", list(k)))
        self._overlay[(table, k)] = None

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """Read a row as this transaction sees it (its own writes, then committed state)."""
        k = key if isinstance(key, tuple) else (key,)
        if (table, k) in self._overlay:
            image = self._overlay[(table, k)]
            return dict(zip(schema.table(table).column_names, image)) if image is not None else None
        self._store._wait_applied_all()
        return self._store.get(table, k)

    def select(self, table: str, where: Sequence[tuple[str, str, Any]] = (), **kw: Any) -> list[dict[str, Any]]:
        """``Store.select`` over committed state, after every earlier commit is applied."""
        self._store._wait_applied_all()
        return self._store.select(table, where, **kw)

    def next_id(self, table: str) -> int:
        """Allocate the next integer key of a single-key table (never reused in this process)."""
        return self._store._next_id(table)


class Store(FaultHandling):
    """An open CA database (see the module docstring for the interface; fault handling in :mod:`.faults`)."""

    def __init__(self, home: Path, options: StoreOptions) -> None:
        self.home = Path(home).resolve()
        self.options = options
        self.db_dir = self.home / DB_DIR
        self.log_dir = self.home / LOG_DIR
        self.system_dir = self.home / SYSTEM_DIR
        self.checkpoint_path = self.system_dir / CHECKPOINT_FILE
        self.lock = HomeLock(self.home, "store")
        self.db_path: Path = self.db_dir / "ca.db"
        self.name = ""
        self.identity = ""
        self.recovery = RecoveryReport()
        self._write_lock = threading.RLock()
        self._fd_lock = threading.Lock()
        self._apply_cond = threading.Condition()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._fd = -1
        self._gen = 0
        self._gen_first = 0
        self._gen_created = 0
        self._gen_size = 0
        self._next_lsn = 1
        self._appended_lsn = 0
        self._durable_lsn = 0
        self._applied_lsn = 0
        self._applying = False
        self._syncing = False
        self._waiters: list[tuple[int, threading.Lock]] = []
        self._pending: dict[int, list[Op]] = {}
        self._ids: dict[str, int] = {}
        self._cp: Checkpoint | None = None
        self._init_faults()  # _failed, _degraded, ... (see .faults)
        self._closed = True

    # ---------------------------------------------------------------- lifecycle

    @staticmethod
    def exists(home: Path) -> bool:
        """Whether ``home`` holds a database."""
        d = Path(home) / DB_DIR
        return d.is_dir() and any(p.suffix == ".db" for p in d.iterdir())

    @classmethod
    def create(cls, home: Path, name: str, options: StoreOptions | None = None) -> Store:
        """Make an empty database in ``home`` and open it.

        :param home: the CA home (created if missing).
        :param name: the CA name; the database file is named after it.
        :param options: engine settings.
        """
        home = Path(home)
        if cls.exists(home):
            raise Conflict(ERROR_FILE_EXISTS, str(home), "a database exists already in this home")
        for sub in (DB_DIR, LOG_DIR, SYSTEM_DIR):
            make_dirs(home / sub)
        identity = secrets.token_bytes(16)
        db_path = home / DB_DIR / db_file_name(name)
        tmp = db_path.with_name(db_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        create_file(tmp)  # 0600 before SQLite opens it: its -wal/-shm/-journal take the database's mode
        conn = sqlite3.connect(tmp, isolation_level=None)
        conn.execute("BEGIN")
        schema.create_schema(conn)
        meta = {"identity": identity.hex(), "name": name, "applied_lsn": "0",
                "circular_logging": "1" if (options and options.circular_logging) else "0"}
        conn.executemany("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", meta.items())
        # Issue 13: the lineage is in the new database itself, so every snapshot of it carries it.
        conn.executemany("INSERT INTO setting (name, value) VALUES (?, ?)",
                         [(archivemark.SETTING_LINEAGE, archivemark.new_lineage()),
                          (archivemark.SETTING_LINEAGE_START, "1")])
        conn.commit()
        conn.close()
        fsync_file(tmp)
        os.replace(tmp, db_path)
        fsync_dir(db_path.parent)
        log_dir = home / LOG_DIR
        for g in logfile.list_generations(log_dir).values():
            g.unlink()  # leftovers of a failed earlier create in this home
        logfile.create_generation(log_dir, logfile.LogHeader(1, identity, logfile.now_us(), 1,
                                                             (options or StoreOptions()).log_size))
        write_checkpoint(home / SYSTEM_DIR / CHECKPOINT_FILE, Checkpoint(0, 1, logfile.now_us()),
                         identity.hex())
        return cls.open(home, options)

    @classmethod
    def open(cls, home: Path, options: StoreOptions | None = None) -> Store:
        """Open ``home``'s database for writing, taking its lock and running soft recovery.

        :param home: the CA home.
        :param options: engine settings (defaults when None).
        """
        store = cls(Path(home), options or StoreOptions())
        if not cls.exists(store.home):
            from .registration import refuse_unfinished

            # A restore that failed before placing the database is named, with how to finish it (issue 10).
            refuse_unfinished(store.home)
            raise NotFound(ERROR_FILE_NOT_FOUND, str(store.home), "no CA database in this home")
        store.lock.acquire()
        try:
            store._open()
        except BaseException:
            store._close_handles()
            store.lock.release()
            raise
        return store

    def _open(self) -> None:
        # A registered restore is acted on before anything else (spec §3.3: the CA refuses to start on an
        # uncompleted registration and runs hard recovery on a completed one before serving).
        from .registration import recover_registered

        self.hard_recovery = recover_registered(self.home)
        dbs = sorted(p for p in self.db_dir.iterdir() if p.suffix == ".db")
        self.db_path = dbs[0]
        self._writer = _connect(self.db_path)
        schema.migrate(self._writer)
        meta = read_meta(self._writer)
        self.identity = meta["identity"]
        self.name = meta.get("name", "")
        ident = bytes.fromhex(self.identity)
        if meta.get("circular_logging") != ("1" if self.options.circular_logging else "0"):
            self._writer.execute("UPDATE _meta SET value = ? WHERE key = 'circular_logging'",
                                 ("1" if self.options.circular_logging else "0",))
        applied = int(meta["applied_lsn"])
        self._cp = read_checkpoint(self.checkpoint_path)
        # Stale temp files of an interrupted roll never held a committed record.
        for p in self.log_dir.glob("*.log.tmp"):
            p.unlink()
        gens = logfile.list_generations(self.log_dir)
        headers = check_chain(gens, ident)
        if not headers:
            raise CorruptData(JET_ERR_MISSING_LOG_FILE, str(self.log_dir), "no log generation found")
        newest = max(headers)
        cp = self._cp
        if cp is not None and newest < cp.generation:
            # The checkpoint names the generation holding its next LSN, which existed when it was written:
            # without it, appending to the newest one present would write into a closed generation.
            raise CorruptData(JET_ERR_MISSING_LOG_FILE, logfile.log_name(newest + 1),
                              f"log generation {newest + 1:08X} is missing: the checkpoint (LSN {cp.lsn}) is in "
                              f"generation {cp.generation:08X} but the newest one present is {newest:08X}")
        # Replay starts at the generation holding applied+1: the last one whose first LSN <= applied+1.
        start = [g for g, h in headers.items() if h.first_lsn <= applied + 1]
        if not start:
            first = min(headers)
            raise CorruptData(JET_ERR_MISSING_LOG_FILE, logfile.log_name(first - 1 if first > 1 else first),
                              f"database needs LSN {applied + 1} but the oldest log starts at "
                              f"{headers[first].first_lsn}")
        files = [gens[g] for g in headers if g >= max(start)]
        try:
            self.recovery = replay(self._writer, files, ident, applied, kind="soft", cut_torn_tail=True)
        except CorruptData as e:
            if e.hresult != JET_ERR_LOG_FILE_CORRUPT:
                raise
            # Damage above the applied LSN: the record is needed and exists nowhere else in this home.
            raise CorruptData(e.hresult, e.function,
                              f"{e.message}; {health_mod.restore_advice(self._writer, self.home)}") from None
        res, _ = logfile.scan(gens[newest], ident, applied=self.recovery.to_lsn)
        self._gen = newest
        self._gen_first = headers[newest].first_lsn
        self._gen_created = headers[newest].created_us
        self._gen_size = res.end
        last = res.last_lsn if res.last_lsn is not None else headers[newest].first_lsn - 1
        if last < self.recovery.to_lsn:
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, self.db_path.name,
                              f"database is at LSN {self.recovery.to_lsn}, past the log's end {last}")
        self._next_lsn = last + 1
        self._appended_lsn = self._durable_lsn = self._applied_lsn = last
        # Records are written at _gen_size (pwrite): the file may be preallocated past them.
        self._fd = os.open(gens[newest], os.O_WRONLY)
        self._closed = False
        if self.recovery.replayed or self.recovery.torn_tail:
            self.recovery.clean = False
            try:
                self.checkpoint()
            except StorageError as e:  # the replayed records are applied and in the log: start anyway
                log.warning("checkpoint after recovery failed (the next start replays again): %s", e)
        if self.recovery.damaged:
            self._report_damage(self.recovery.damaged)

    def close(self) -> None:
        """Checkpoint and release everything; after a clean close nothing needs replay."""
        if self._closed:
            return
        try:
            if self._failed is None:
                with self._write_lock:
                    try:
                        self.checkpoint()
                    except (CertSrvError, OSError, sqlite3.Error) as e:
                        # Nothing is lost: the log holds every committed record and the next start replays it.
                        log.warning("checkpoint at close failed (the next start replays the log): %s", e)
        finally:
            with self._apply_cond:
                self._closed = True
                while self._applying:  # a background retry is using the writer connection
                    self._apply_cond.wait()
            self._retry_stop.set()
            t = self._retry_thread
            if t is not None and t is not threading.current_thread():
                t.join(10)
            self._close_handles()
            self.lock.release()

    def _close_handles(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with self._conns_lock:
            for c in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        db_fd: int = getattr(self, "_db_fd", -1)
        if db_fd >= 0:  # only now that SQLite's connections are closed (see _database_fd)
            os.close(db_fd)
            self._db_fd = -1

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CertSrvError(E_UNEXPECTED, "store", "the database is closed")

    def _check_usable(self) -> None:
        """Open and no sync failed (backups, log management; reads only need :meth:`_check_open`)."""
        self._check_open()
        if self._failed is not None:
            raise sync_failed_error("store", self._failed, self._failed_state)

    # ---------------------------------------------------------------- writes

    def transaction(self) -> Transaction:
        """Collect row images; on exit append one record, wait for durability, apply to SQLite.

        Bodies are serialised; the fsync is shared by concurrent committers (group commit).
        Compute and validate before entering: the body should only read and put. Refused
        (:class:`StorageError`) while the store is degraded or failed (see :mod:`.health`).
        """
        self._check_writable()
        return Transaction(self)

    def _log_locked(self, tx: Transaction) -> int:
        """Append ``tx`` as the next record (the write lock is held); returns its LSN."""
        self._check_writable()
        lsn = self._next_lsn
        try:
            payload = encode_payload(tx.ops)
        except (ValueError, TypeError) as e:  # nothing is logged: the store stays usable
            raise InvalidArgument(E_INVALIDARG, "store", f"cannot log the transaction: {e}") from None
        rec = logfile.encode_record(lsn, logfile.now_us(), payload)
        if self._gen_size + len(rec) > self.options.log_size and self._gen_size > logfile.HEADER_SIZE:
            self._roll_locked()
        # Queued before it can become durable: whichever committer applies next takes it.
        self._pending[lsn] = tx.ops
        try:
            self._append(rec)
        except BaseException:
            del self._pending[lsn]
            raise
        self._next_lsn = lsn + 1
        self._appended_lsn = lsn
        tx.lsn = lsn
        return lsn

    def _append(self, rec: bytes) -> None:
        before = self._gen_size
        try:
            done = os.pwrite(self._fd, rec, before)
            if done != len(rec):  # a short write (disk full): finish it or fail below
                view = memoryview(rec)
                while done < len(rec):
                    done += os.pwrite(self._fd, view[done:], before + done)
        except OSError as e:
            # Leave no partial frame behind: the next record must follow a whole one (and one left by a
            # failed truncate is overwritten by the next append, or cut at the next start as a torn tail).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            what = f"cannot append to {logfile.log_name(self._gen)}: {e}; nothing was written"
            if is_disk_full(e):
                raise disk_full_error("store", what) from None
            raise StorageError(ERROR_IO_DEVICE, "store", what + "; check the disk and the service log") from None
        self._gen_size = before + len(rec)

    def _commit_wait(self, lsn: int) -> bool:
        """Return once ``lsn`` is durable in the log and applied to SQLite (group commit, group apply).

        Returns True when applied, False when durable but not applied because the store is degraded
        (the record is committed: the log holds it, and the store applies it by itself later). Raises
        :class:`StorageError` when the record was not made durable (the log sync failed).

        Two stages, each run by one waiting committer at a time and both at once: the *syncer*
        fdatasyncs the log for every record appended so far; the *applier* applies every durable,
        unapplied record in ONE SQLite transaction that also stores the new applied LSN (so each
        logged transaction stays all-or-nothing in SQLite). While one batch is applied the next one
        is being synced, so the fsync wait overlaps the apply's CPU work instead of adding to it.
        A committer takes a free stage it can serve, else sleeps on its own gate; whoever finishes
        a stage opens the gates of the committers it completed and of one committer for each stage
        that has work left (one wakeup per commit and per batch, no thundering herd).
        """
        cond = self._apply_cond
        applied = True
        with cond:
            while self._applied_lsn < lsn:
                durable = self._durable_lsn >= lsn
                if durable and self._degraded is not None and not self._applying:
                    applied = False  # committed: the log holds it; applied later (retry thread, next write)
                    break
                if not durable and self._failed is not None:
                    # fsyncgate: never answer this write as durable, whatever a retried sync would say.
                    raise sync_failed_error("store", f"{self._failed}; this write was NOT made durable and "
                                            "may or may not be present after the restart's recovery",
                                            self._failed_state)
                if not durable:
                    if not self._syncing:
                        self._sync_locked()
                        continue
                elif not self._applying:
                    self._apply_locked()
                    continue
                gate = threading.Lock()
                gate.acquire()
                self._waiters.append((lsn, gate))
                cond.release()
                try:
                    gate.acquire()  # opened by a committer that finished a stage
                finally:
                    cond.acquire()
        cp = self._cp
        if applied and self.options.checkpoint_records and (
                cp is None or lsn - cp.lsn >= self.options.checkpoint_records):
            with cond:  # re-read: another committer may have just checkpointed
                cp = self._cp
                due = cp is None or lsn - cp.lsn >= self.options.checkpoint_records
            if due:
                try:
                    self.checkpoint()
                except (CertSrvError, OSError, sqlite3.Error) as e:
                    # This commit is durable and applied: its writer is answered success. The checkpoint
                    # is only an optimisation of the next start's replay; a later commit tries again.
                    log.warning("checkpoint failed (retried later; committed records are safe in the log): %s", e)
        return applied

    def _sync_locked(self) -> None:
        """The syncer stage (called and returning with ``_apply_cond`` held, released meanwhile)."""
        cond = self._apply_cond
        self._syncing = True
        target = self._appended_lsn  # every LSN up to it is fully written to the log
        error: str | None = None
        done = False
        cond.release()
        try:
            with self._fd_lock:  # a roll swaps the descriptor under this lock
                os.fdatasync(self._fd)
            done = True
        except (OSError, ValueError) as e:
            # After a failed fsync the page cache state is unknown (fsyncgate): stop writing.
            error = f"fdatasync of {logfile.log_name(self._gen)} failed: {e}"
        finally:
            cond.acquire()
            self._syncing = False
            if done:
                self._durable_lsn = max(self._durable_lsn, target)
            else:
                self._fail_locked(FAILED_SYNC, error or "interrupted while syncing the log")
            # No applier is woken: this committer's own LSN is now durable, it applies next if it can.
            self._wake_locked(apply=False)

    def _apply_locked(self) -> None:
        """The applier stage (called and returning with ``_apply_cond`` held, released meanwhile)."""
        cond = self._apply_cond
        self._applying = True
        first, last = self._applied_lsn + 1, self._durable_lsn
        # Kept in _pending until applied: a failed batch stays there (reads by key see it, a retry applies it).
        batch = [self._pending[n] for n in range(first, last + 1)]
        error: BaseException | None = None
        done = False
        cond.release()
        try:
            writer = self._writer
            assert writer is not None
            try:
                writer.execute("BEGIN")
                batcher = Batcher(writer)
                for ops in batch:
                    batcher.add(ops)
                batcher.flush()
                set_applied(writer, last)
                writer.commit()
                done = True
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    writer.rollback()
                error = e
        finally:
            cond.acquire()
            self._applying = False
            if done:
                for n in range(first, last + 1):
                    del self._pending[n]
                self._applied_lsn = last
                if self._degraded is not None:
                    log.info("store recovered: applied the committed records LSN %d..%d from the log; "
                             "accepting writes again (was %s since %s)", first, last, self._degraded,
                             self._state_since)
                    self._degraded, self._degraded_detail, self._state_since = None, "", None
            else:
                self._degrade_locked(first, last, error)
            self._wake_locked(apply=True)
            cond.notify_all()  # checkpoint() and readers waiting for the applied LSN

    def _wake_locked(self, *, apply: bool) -> None:
        """Open the gates of finished committers and of one committer per stage with work left."""
        if self._failed is not None or self._degraded is not None:
            for _, gate in self._waiters:
                gate.release()
            self._waiters = []
            return
        applied, durable = self._applied_lsn, self._durable_lsn
        need_apply = apply and not self._applying and durable > applied
        need_sync = not self._syncing and self._appended_lsn > durable
        keep: list[tuple[int, threading.Lock]] = []
        for w in self._waiters:
            n = w[0]
            if n <= applied:
                w[1].release()
            elif need_apply and n <= durable:
                w[1].release()
                need_apply = False
            elif need_sync and n > durable:
                w[1].release()
                need_sync = False
            else:
                keep.append(w)
        self._waiters = keep

    def _wait_applied_all(self) -> None:
        target = self._appended_lsn
        with self._apply_cond:
            while self._applied_lsn < target and self._failed is None and self._degraded is None:
                self._apply_cond.wait()

    def _next_id(self, table: str) -> int:
        t = schema.table(table)
        if len(t.key) != 1:
            raise InvalidArgument(None, "store", f"{table} has no single integer key")
        with self._write_lock:
            if table not in self._ids:
                self._wait_applied_all()
                cur = int(self.max_value(table, t.key[0]) or 0)
                with self._apply_cond:  # committed but unapplied rows (degraded store) hold ids too
                    pending = [ops for ops in self._pending.values()]
                for ops in pending:
                    for tname, kind, values in ops:
                        if tname == table and kind == "p":
                            cur = max(cur, int(values[t.key_positions[0]]))
                self._ids[table] = cur
            self._ids[table] += 1
            return self._ids[table]

    # ---------------------------------------------------------------- log management

    def roll_log(self) -> int:
        """Close the current generation (made durable) and start the next; returns the closed number."""
        self._check_usable()
        with self._write_lock:
            return self._roll_locked()

    def _roll_locked(self) -> int:
        closed = self._gen
        # Cut and sync outside _fd_lock (only a roll swaps the descriptor, and the write lock is held), so
        # a failure can take _apply_cond, which is taken before _fd_lock elsewhere (checkpoint).
        try:
            os.ftruncate(self._fd, self._gen_size)  # a closed generation ends at its last record
            os.fsync(self._fd)
        except OSError as e:
            with self._apply_cond:  # fsyncgate: the records appended so far may be lost
                self._fail_locked(FAILED_SYNC, f"fsync of {logfile.log_name(closed)} failed: {e}")
            raise sync_failed_error("store", f"fsync of {logfile.log_name(closed)} failed: {e}") from None
        # The swap runs under _fd_lock: a group-commit syncer outside the write lock must never see a
        # closed or -1 descriptor, and _generation_of must see (_gen, _gen_first) together.
        with self._fd_lock:
            header = logfile.LogHeader(closed + 1, bytes.fromhex(self.identity), logfile.now_us(), self._next_lsn,
                                       self.options.log_size)
            try:
                new, header = logfile.create_generation(self.log_dir, header)
            except OSError as e:
                # Nothing is lost: the closed generation is whole and synced; this write is refused.
                tmp = self.log_dir / (logfile.log_name(closed + 1) + ".tmp")
                with contextlib.suppress(OSError):
                    tmp.unlink()
                what = f"cannot start log generation {logfile.log_name(closed + 1)}: {e}; nothing was written"
                if is_disk_full(e):
                    raise disk_full_error("store", what) from None
                raise StorageError(ERROR_IO_DEVICE, "store", what) from None
            old_fd, self._fd = self._fd, os.open(new, os.O_WRONLY)
            os.close(old_fd)
            self._gen = closed + 1
            self._gen_first = self._next_lsn
            self._gen_created = header.created_us
            self._gen_size = logfile.HEADER_SIZE
        with self._apply_cond:
            self._durable_lsn = max(self._durable_lsn, self._appended_lsn)  # the fsync above covered them
        path = self.log_dir / logfile.log_name(closed)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o400)  # closed generations are immutable (and private: issue 9)
        return closed

    def generations(self) -> list[GenerationInfo]:
        """Every generation in the log directory with its LSN range, oldest first."""
        self._check_usable()
        with self._write_lock:
            gens = logfile.list_generations(self.log_dir)
            headers = {g: logfile.read_header(p) for g, p in gens.items()}
            out: list[GenerationInfo] = []
            nums = sorted(headers)
            for i, g in enumerate(nums):
                h = headers[g]
                if g == self._gen:
                    last = self._appended_lsn
                    size = self._gen_size
                else:
                    nxt = headers[nums[i + 1]].first_lsn if i + 1 < len(nums) else self._gen_first
                    last = nxt - 1
                    size = gens[g].stat().st_size
                out.append(GenerationInfo(g, gens[g], h.first_lsn, last, h.created_us, size, g != self._gen))
            return out

    @property
    def current_generation(self) -> int:
        """Number of the generation being written."""
        return self._gen

    @property
    def log_position(self) -> tuple[int, int, int]:
        """``(generation being written, its first LSN, last LSN appended)``, read together."""
        with self._fd_lock:
            return self._gen, self._gen_first, self._appended_lsn

    @property
    def applied_lsn(self) -> int:
        """Highest LSN applied to SQLite."""
        return self._applied_lsn

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint last written."""
        return self._cp

    @property
    def circular_logging(self) -> bool:
        """Whether generations below the checkpoint are deleted automatically."""
        return self.options.circular_logging

    def _generation_of(self, lsn: int) -> int:
        """The generation that holds (or will hold) ``lsn``."""
        with self._fd_lock:  # a roll updates the pair under this lock
            gen, first = self._gen, self._gen_first
        if lsn >= first:
            return gen
        gens = logfile.list_generations(self.log_dir)
        best = self._gen
        for g, p in sorted(gens.items(), reverse=True):
            if logfile.read_header(p).first_lsn <= lsn:
                return g
            best = g
        return best

    def checkpoint(self) -> Checkpoint:
        """Make SQLite durable up to the applied LSN and record that position in ``edb.chk``."""
        if self._closed:
            raise CertSrvError(E_UNEXPECTED, "store", "the database is closed")
        with self._apply_cond:
            while self._applying:  # a group commit is using the writer connection
                self._apply_cond.wait()
            assert self._writer is not None
            lsn = self._applied_lsn
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            try:
                # Never open+close the live database here: closing any descriptor drops SQLite's POSIX locks.
                os.fsync(self._database_fd())
                wal = self.db_path.with_name(self.db_path.name + "-wal")
                if wal.exists():
                    fsync_file(wal)
            except OSError as e:
                # fsyncgate: SQLite's pages may be lost; only a restart's replay from the log is trustworthy.
                self._fail_locked(FAILED_DB_SYNC, f"fsync of {self.db_path.name} failed: {e}")
                raise sync_failed_error("checkpoint", f"fsync of {self.db_path.name} failed: {e}",
                                        FAILED_DB_SYNC) from None
            cp = Checkpoint(lsn, self._generation_of(lsn + 1), logfile.now_us())
            try:
                write_checkpoint(self.checkpoint_path, cp, self.identity)
            except OSError as e:
                for tmp in self.system_dir.glob(f".{CHECKPOINT_FILE}.tmp-*"):  # atomic_write's leftover
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                what = f"cannot write {CHECKPOINT_FILE}: {e}"
                raise (disk_full_error("checkpoint", what) if is_disk_full(e)
                       else StorageError(ERROR_IO_DEVICE, "checkpoint", what)) from None
            self._cp = cp
        if self.options.circular_logging:
            self.truncate_logs(cp.generation)
        return cp

    def truncate_logs(self, below: int) -> list[int]:
        """Delete generations numbered below ``below``; returns the numbers deleted.

        Refused when ``below`` is past the checkpoint's generation: those logs are still
        needed for crash recovery.
        """
        self._check_usable()
        cp = self._cp
        if cp is None or below > cp.generation:
            raise InvalidArgument(
                E_INVALIDARG, "truncate",
                f"generation {below:08X} is past the checkpoint's "
                f"({(cp.generation if cp else 0):08X}); those logs are needed for recovery")
        present = logfile.list_generations(self.log_dir)
        if self.options.archiving and present:
            # Issue 13: a generation goes only when archived AND no longer needed by recovery.
            below = min(below, archivemark.keep_floor(self, min(present)))
        deleted: list[int] = []
        for g, p in present.items():
            if g < below and g != self._gen:
                p.unlink(missing_ok=True)  # concurrent checkpoints (circular logging) may race here
                deleted.append(g)
        if deleted:
            fsync_dir(self.log_dir)
        return deleted

    def snapshot(self, dest: Path, *, durable: bool = True) -> SnapshotInfo:
        """Copy SQLite consistently to ``dest`` (one file, rollback journal) without stopping writers.

        :param dest: the file to write (replaced atomically).
        :param durable: fsync the copy and rename it into place; False for a scratch copy that is
            thrown away when the process dies (a backup's staging file), written in place unsynced.
        """
        self._check_usable()
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp") if durable else dest
        tmp.unlink(missing_ok=True)
        create_file(tmp)  # private before SQLite fills it (a snapshot holds every request)
        src = self._reader()
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            # The copy goes to a new file that is only used once complete (renamed, or handed over after
            # this returns): a rollback journal and syncs on it protect nothing (measured ~1.6x faster).
            dst.execute("PRAGMA journal_mode=OFF")
            dst.execute("PRAGMA synchronous=OFF")
            src.backup(dst)  # one step: a single read transaction, so one consistent LSN
            dst.execute("PRAGMA journal_mode=DELETE")
            lsn = int(dst.execute("SELECT value FROM _meta WHERE key='applied_lsn'").fetchone()[0])
        finally:
            dst.close()
        if durable:
            fsync_file(tmp)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        return SnapshotInfo(dest, lsn, self._generation_of(lsn + 1), dest.stat().st_size)

    def pin_snapshot(self, attempts: int = 40) -> tuple[SnapshotInfo, bytes, int, contextlib.ExitStack] | None:
        """Hold the database file itself still at one LSN, so it can be read in place instead of copied.

        Under the apply lock (no commit can run) the WAL is checkpointed completely and a read
        transaction is opened on a connection of its own. While that transaction lasts, no checkpoint
        may copy into the database file a page newer than its view (SQLite WAL rules: a checkpoint
        stops at the end mark of the oldest reader), and its view is the file alone: the file does
        not change, while writers go on appending to the WAL. Nothing here writes to the file.

        :param attempts: complete-checkpoint tries (a reader on an older view blocks one) before giving up.
        :returns: ``(info, header, fd, pin)``: ``info.path`` is the live database file and ``info.size``
            the snapshot's bytes (page count x page size, the file's first bytes); ``header`` replaces the
            file's first bytes in a copy (file format bytes 18-19 set to 1, rollback journal, as
            :meth:`snapshot` writes); ``fd`` reads the file (pread, sendfile) and belongs to the store:
            never close it (see :meth:`_database_fd`); ``pin.close()`` ends the transaction (a second
            close does nothing). None when the WAL could not be checkpointed completely: use
            :meth:`snapshot`.
        """
        self._check_usable()
        fd = self._database_fd()
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
        pinned = False
        try:
            # Most of the WAL is copied first without the lock (writers go on), so that commits wait
            # only for the few frames written meanwhile (and that checkpoint's fsync) below.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            for _ in range(max(1, attempts)):
                with self._apply_cond:
                    while self._applying:  # the writer connection is in use by a group commit
                        self._apply_cond.wait()
                    self._check_usable()
                    assert self._writer is not None
                    _, frames, done = self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= 0 and frames == done:
                        conn.execute("BEGIN")  # the read transaction starts with the first read, still locked
                        lsn = int(conn.execute("SELECT value FROM _meta WHERE key='applied_lsn'").fetchone()[0])
                        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                        pinned = True
                        break
                    self._apply_cond.wait(0.005)  # wakes early when a commit finishes
        finally:
            if not pinned:
                conn.close()
        if not pinned:
            return None
        head = bytearray(os.pread(fd, 100, 0))
        # sqlite.org/fileformat2.html §1.3.3: bytes 18/19 are 2 in WAL mode, 1 with a rollback journal.
        if len(head) == 100 and head[:16] == b"SQLite format 3\x00":
            head[18] = head[19] = 1
        with self._conns_lock:
            self._conns.append(conn)  # closed with the store if the pin is still held then

        def unpin() -> None:
            with self._conns_lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()  # ends the read transaction

        pin = contextlib.ExitStack()
        pin.callback(unpin)
        info = SnapshotInfo(self.db_path, lsn, self._generation_of(lsn + 1), pages * page_size)
        return info, bytes(head), fd, pin

    def _database_fd(self) -> int:
        """A read-only descriptor of the database file, open until the store closes.

        POSIX record locks belong to the process: closing any descriptor of the file (even a dup) drops
        every lock SQLite holds on it, and another process closing its own connection could then take
        the database as unused and checkpoint and delete the WAL under us. So this descriptor is opened
        once and closed only after SQLite's connections (in ``_close_handles``).
        """
        with self._conns_lock:
            fd: int = getattr(self, "_db_fd", -1)
            if fd < 0:
                fd = os.open(self.db_path, os.O_RDONLY | os.O_CLOEXEC)
                self._db_fd = fd
            return fd

    # ---------------------------------------------------------------- reads

    def _reader(self) -> sqlite3.Connection:
        # Reads go on in every state: SQLite holds only synced, applied records (see .health).
        self._check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key ``key`` (scalar or tuple), or None."""
        t = schema.table(table)
        k = key if isinstance(key, tuple) else (key,)
        if self._degraded is not None:
            found, row = self._unapplied_row(table, k)
            if found:
                return row
        rows = self.select(table, [(c, "=", v) for c, v in zip(t.key, k)], limit=1)
        return rows[0] if rows else None

    def _where(self, table: str, where: Sequence[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
        t = schema.table(table)
        parts: list[str] = []
        params: list[Any] = []
        for col, op, val in where:
            if col not in t.column_names or op not in OPS:
                raise InvalidArgument(None, "store", f"bad filter {col} {op}")
            if op in ("is null", "is not null"):
                parts.append(f"{col} {op.upper()}")
            else:
                parts.append(f"{col} {op.upper()} ?")
                params.append(val)
        return (" WHERE " + " AND ".join(parts)) if parts else "", params

    def select(
        self,
        table: str,
        where: Sequence[tuple[str, str, Any]] = (),
        *,
        order_by: Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Rows matching every ``(column, op, value)`` filter.

        :param table: table name.
        :param where: filters; op is one of ``= != < <= > >= like``, ``is null``, ``is not null``.
        :param order_by: column names, ``-name`` for descending.
        :param limit: at most this many rows.
        :param offset: skip this many rows first.
        """
        t = schema.table(table)
        clause, params = self._where(table, where)
        order = []
        for o in order_by:
            desc = o.startswith("-")
            col = o.lstrip("-")
            if col not in t.column_names:
                raise InvalidArgument(None, "store", f"cannot order by {col}")
            order.append(f"{col} {'DESC' if desc else 'ASC'}")
        sql = f"SELECT * FROM {table}{clause}"
        if order:
            sql += " ORDER BY " + ", ".join(order)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        return [dict(r) for r in self._reader().execute(sql, params)]

    def count(self, table: str, where: Sequence[tuple[str, str, Any]] = ()) -> int:
        """Number of rows matching the filters."""
        clause, params = self._where(table, where)
        return int(self._reader().execute(f"SELECT COUNT(*) FROM {table}{clause}", params).fetchone()[0])

    def max_value(self, table: str, column: str) -> Any:
        """Largest value of a column (None for an empty table)."""
        t = schema.table(table)
        if column not in t.column_names:
            raise InvalidArgument(None, "store", f"{table} has no column {column}")
        return self._reader().execute(f"SELECT MAX({column}) FROM {table}").fetchone()[0]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when sound)."""
        return str(self._reader().execute("PRAGMA integrity_check").fetchone()[0])


def hard_recover(
    db_path: Path,
    log_dir: Path,
    gen_low: int,
    gen_high: int,
    *,
    identity: str | None = None,
    until_lsn: int | None = None,
    until_us: int | None = None,
    extra_generations: Sequence[Path] = (),
) -> RecoveryReport:
    """Replay generations ``gen_low..gen_high`` from ``log_dir`` onto a restored database file.

    :param db_path: the database snapshot to bring forward (modified in place).
    :param log_dir: directory holding the backed-up generations.
    :param gen_low: first generation to replay.
    :param gen_high: last generation to replay; each one in between must exist.
    :param identity: the CA's database identity (defaults to the snapshot's own).
    :param until_lsn: stop after this LSN.
    :param until_us: stop before the first record later than this time (µs since epoch).
    :param extra_generations: contiguous newer generations to roll forward afterwards (phase II).

    The file is written without SQLite's per-commit syncs and with its rollback journal in memory
    (each batch stays all-or-nothing against SQL errors) and fsynced once at the end: a process that
    dies during hard recovery leaves a file to be discarded, which is why restores run it on a temp
    copy and start over from the restored file after a crash (see :mod:`.registration`).
    """
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA cache_size=-{REPLAY_CACHE_KIB}")
        meta = read_meta(conn)
        ident = identity or meta["identity"]
        if meta["identity"] != ident:
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, db_path.name,
                              f"database belongs to {meta['identity']}, not {ident}")
        gens = logfile.list_generations(Path(log_dir))
        check_chain(gens, bytes.fromhex(ident), gen_low, gen_high, restore=True)
        files = [gens[g] for g in range(gen_low, gen_high + 1)] + list(extra_generations)
        rep = replay(conn, files, bytes.fromhex(ident), int(meta["applied_lsn"]), kind="hard",
                     cut_torn_tail=False, until_lsn=until_lsn, until_us=until_us)
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, db_path.name, f"integrity check failed: {result}")
    finally:
        conn.close()
    # synchronous=OFF above: make the result durable here, once.
    fsync_file(db_path)
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists():
        fsync_file(wal)
    return rep


def copy_database(src: Path, dest: Path) -> None:
    """Copy a closed database file durably (used when placing restored files)."""
    tmp = dest.with_name(dest.name + ".tmp")
    copy_file(src, tmp)
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
