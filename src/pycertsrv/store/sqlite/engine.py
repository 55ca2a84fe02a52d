"""The SQLite engine's store: create, open (restore and soft recovery first), close, and the engine interface.

``HOME/db/<CA>.db`` (WAL mode) holds the tables, ``HOME/logs/edbXXXXXXXX.log`` the redo log,
``HOME/system/edb.chk`` the checkpoint (:class:`~pycertsrv.home.Home` names them). The contract each call keeps
is in :mod:`pycertsrv.store.interface`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_FILE_EXISTS,
    ERROR_FILE_NOT_FOUND,
    CertSrvError,
    Conflict,
    InvalidArgument,
    NotFound,
    StorageError,
)
from ...fsutil import create_file, make_dirs, publish_file
from ...home import Home
from .. import archivemark, logfile
from ..health import sync_failed_error
from ..interface import Commit, Engine, RecoveryTarget
from ..logfile import Op
from ..onenode import OneNode
from ..options import StoreOptions, initial_meta
from ..registration import refuse_unfinished
from ..transaction import Transaction
from . import ddl
from .checkpoint import Checkpoint, Checkpointing, read_checkpoint, write_checkpoint
from .commitlog import CommitLog
from .dbfile import connect, connect_plain, database_files, db_file_name
from .faults import FaultHandling
from .recovery import FileRecoveryTarget, soft_recover
from .replay import read_meta
from .restore import recover_registered
from .snapshot import SCRATCH_PREFIX, Snapshots
from .tables import Tables

log = logging.getLogger("pycertsrv.store")


def _clean_scratch(staging: Path) -> None:
    """Remove snapshot copies a process that died while making one left behind."""
    if staging.is_dir():
        for p in staging.glob(f"{SCRATCH_PREFIX}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


class Store(FaultHandling, CommitLog, Checkpointing, Snapshots, Tables, OneNode):
    """An open CA database on SQLite: the :class:`~pycertsrv.store.interface.Engine` and the facade the CA uses.

    Its parts: :mod:`.commitlog`, :mod:`.checkpoint`, :mod:`.snapshot`, :mod:`.tables`, :mod:`.faults`;
    recovery in :mod:`.recovery` (soft, at open) and :mod:`.restore` (a registered restore, at open).
    """

    # ---------------------------------------------------------------- lifecycle

    @staticmethod
    def exists(home: Path) -> bool:
        """Whether ``home`` holds a database."""
        d = Home(Path(home)).db_dir
        return d.is_dir() and bool(database_files(d))

    @classmethod
    def create(cls, home: Path, name: str, options: StoreOptions | None = None) -> Store:
        """Make an empty database in ``home`` and open it.

        :param home: the CA home (created if missing).
        :param name: the CA name; the database file is named after it.
        :param options: engine settings.
        """
        home = Path(home)
        layout = Home(home)
        if cls.exists(home):
            raise Conflict(ERROR_FILE_EXISTS, str(home), "a database exists already in this home")
        for d in (layout.db_dir, layout.log_dir, layout.system_dir):
            make_dirs(d)
        identity = secrets.token_bytes(16)
        db_path = layout.db_dir / db_file_name(name)
        tmp = db_path.with_name(db_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        create_file(tmp)  # 0600 before SQLite opens it: its -wal/-shm/-journal take the database's mode
        conn = connect_plain(tmp)
        conn.execute("BEGIN")
        ddl.create_schema(conn)
        meta = initial_meta(identity.hex(), name, options)
        conn.executemany("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", meta.items())
        conn.executemany("INSERT INTO setting (name, value) VALUES (?, ?)", archivemark.initial_settings())
        conn.commit()
        conn.close()
        publish_file(tmp, db_path)
        log_dir = layout.log_dir
        for g in logfile.list_generations(log_dir).values():
            g.unlink()  # leftovers of a failed earlier create in this home
        logfile.create_generation(log_dir, logfile.LogHeader(1, identity, logfile.now_us(), 1,
                                                             (options or StoreOptions()).log_size))
        write_checkpoint(layout.checkpoint, Checkpoint(0, 1, logfile.now_us()),
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
        self.hard_recovery = recover_registered(self.home)
        _clean_scratch(Home(self.home).staging_dir)
        self.db_path = database_files(self.db_dir)[0]
        self._writer = connect(self.db_path)
        ddl.migrate(self._writer)
        meta = read_meta(self._writer)
        self.identity = meta["identity"]
        self.name = meta.get("name", "")
        if meta.get("circular_logging") != self.options.circular_flag:
            self._writer.execute("UPDATE _meta SET value = ? WHERE key = 'circular_logging'",
                                 (self.options.circular_flag,))
        self._cp = read_checkpoint(self.checkpoint_path)
        tail = soft_recover(self._writer, self.log_dir, self.identity, int(meta["applied_lsn"]), self._cp,
                            self.home, self.db_path.name)
        self.recovery = tail.report
        self._gen = tail.generation
        self._gen_first = tail.first_lsn
        self._gen_created = tail.created_us
        self._gen_size = tail.end
        self._next_lsn = tail.last_lsn + 1
        self._appended_lsn = self._durable_lsn = self._applied_lsn = tail.last_lsn
        # Records are written at _gen_size (pwrite): the file may be preallocated past them.
        self._fd = os.open(tail.path, os.O_WRONLY)
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
        db_fd = self._db_fd
        if db_fd >= 0:  # only now that SQLite's connections are closed (see _database_fd)
            os.close(db_fd)
            self._db_fd = -1

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def database_name(self) -> str:
        """The database file's name (``<CA>.db``; a backup set carries it under this name)."""
        return self.db_path.name

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

    # ---------------------------------------------------------------- the engine interface

    def commit(self, ops: Sequence[Op]) -> Commit:
        """One record of ``ops``, durable when this returns (see :meth:`.interface.Engine.commit`)."""
        tx = self.transaction()
        with tx:
            tx.ops.extend(ops)
        if tx.lsn is None:
            raise InvalidArgument(E_INVALIDARG, "store", "an empty commit writes no record")
        return Commit(tx.lsn, tx.applied)

    def roll(self) -> int:
        """Close the open generation; returns its number (see :meth:`.interface.Engine.roll`)."""
        return self.roll_log()

    def truncate(self, below_generation: int) -> list[int]:
        """Delete generations below ``below_generation`` (see :meth:`.interface.Engine.truncate`)."""
        return self.truncate_logs(below_generation)


if TYPE_CHECKING:
    def _is_engine(store: Store) -> Engine:
        return store  # mypy checks here that the SQLite store keeps the engine interface


def recovery_target(dest: Path) -> RecoveryTarget:
    """Where hard recovery rebuilds a database file ``dest`` (see :class:`.recovery.FileRecoveryTarget`)."""
    return FileRecoveryTarget(dest)
