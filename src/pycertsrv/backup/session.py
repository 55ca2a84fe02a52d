"""The server side of an online backup: the session state machine of spec §2.20.

One backup runs at a time per CA (spec §2.2 [INF]: ESE allows one external backup per
instance). A session moves ``PREPARED(kind, phase)`` with ``phase`` in ``DB -> LOGS ->
TRUNCATED``; at most one file is open at a time.

- *Full* backup: at Prepare the database is fixed at one LSN S without stopping issuance: the
  store's snapshot stream (``Store.open_snapshot``, see :mod:`pycertsrv.store.interface`). It ends
  when the log list is requested or the session ends. The database name listed is the live
  database's path (the spec's names, §1.3/1.4); opening it streams the snapshot. Log generations
  are read as the store's generation streams (``Store.open_generation``) under their listed names.
  When the log list is requested the current generation is rolled and generations
  ``gen(S+1) .. rolled`` are listed: snapshot + those logs = the CA as it was at the roll.
- *Incremental* (logs only): the generations after the previous recorded backup's
  ``gen_high`` up to the rolled one.

The file-name rule of open_file (spec §2.6: only names this session listed) is in :mod:`.listed`;
the record of finished backups in :mod:`.history`; the phases and the kind decode in :mod:`.states`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..errors import (
    E_ACCESSDENIED,
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_FILE_NOT_FOUND,
    JET_ERR_BACKUP_IN_PROGRESS,
    JET_ERR_INVALID_BACKUP_SEQUENCE,
    JET_ERR_MISSING_FILE_TO_BACKUP,
    AccessDenied,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
    SequenceError,
)
from ..home import Home
from ..spec import (
    CSBACKUP_TYPE_FULL,
    FULL,
    INCREMENTAL,
    MAX_READ,
    MAX_SEND,
    TAG_CERTSERVER_DATABASE,
    TAG_CHECKPOINT_DIR,
    TAG_LOG,
    TAG_LOG_DIR,
)
from ..store import ByteStream, CAStore, SnapshotStream, Store, log_name
from ..store.postgres import PgStore
from .history import backup_history, check_incremental_allowed, record_backup
from .listed import check_listed_file
from .liveness import SessionEnding
from .nodes import claim as claim_backup
from .nodes import lineage_runs
from .nodes import release as release_backup
from .states import PHASE_DB, PHASE_LOGS, PHASE_TRUNCATED, decode_backup_type, no_open_file


class _HasStore(Protocol):
    store: CAStore

    def dynamic_files(self) -> list[Path]: ...


@dataclass
class _OpenFile:
    name: str
    size: int
    fd: int = -1  # a dynamic file's descriptor (ours), or -1 for a store stream
    stream: ByteStream | None = None  # the snapshot or a generation, from the store
    owns_stream: bool = False  # a generation's stream is closed with the file; the snapshot's at _unpin
    pos: int = 0

    def close(self) -> None:
        """Release the descriptor or the generation's stream."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        if self.stream is not None and self.owns_stream:
            self.stream.close()

    def read(self, count: int) -> bytes:
        """The ``count`` bytes at the position (fewer at the end)."""
        if self.stream is not None:
            return self.stream.read(self.pos, count)
        return os.pread(self.fd, count, self.pos) if count else b""


@dataclass
class _Session:
    handle: str
    principal: str
    kind: str
    started: datetime
    staging: Path
    last_activity: float
    phase: str = PHASE_DB
    ready: bool = False
    snapshot: SnapshotStream | None = None  # the store's snapshot at snapshot_lsn (closed at _unpin)
    snapshot_lsn: int | None = None
    gen_low: int | None = None
    gen_high: int | None = None
    db_names: list[str] = field(default_factory=list)
    db_listed: bool = False
    log_names: list[str] | None = None
    log_gens: dict[str, int] = field(default_factory=dict)  # listed log name -> its generation
    dynamic_names: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    open: _OpenFile | None = None
    truncated: bool = False
    truncated_gens: list[int] = field(default_factory=list)
    # Issue 14: the lease epoch of each listed generation, as runs {epoch, gen_low, gen_high} (set's manifest).
    lineage: list[dict[str, int]] | None = None
    # Issue 14: the cluster-wide backup claim's id (not the handle: the claim names it to other nodes' callers).
    claim_id: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    busy: int = 0
    ended: bool = False
    reading: bool = False  # a file was opened: the short idle limit applies from now on
    bytes_sent: int = 0  # bytes handed out by Read (progress for status)
    # Connections the client asked to hold the session (spec §2.20 [INF]: a client that goes away ends it).
    holders: list[object] = field(default_factory=list)


def _the_open_file(s: _Session, fn: str) -> _OpenFile:
    """The session's open file; E_UNEXPECTED when none is (spec §2.20: BackupRead/BackupClose follow BackupOpenFile)."""
    if s.open is None:
        raise SequenceError(E_UNEXPECTED, fn, "no file is open")
    return s.open


def _reading(s: _Session, n: int) -> _OpenFile:
    """BackupRead's checks, for both ways of sending: a file is open and the buffer size is positive."""
    f = _the_open_file(s, "BackupRead")
    if int(n) <= 0:
        raise InvalidArgument(E_INVALIDARG, "BackupRead", f"buffer size {n} must be positive")
    return f


@dataclass(frozen=True)
class ReadRange:
    """The next chunk of an open file for a zero-copy sender: ``prefix``, then ``count`` bytes of ``fd`` at
    ``offset``. Call :meth:`close` when sent; the descriptor stays valid until then, whatever the session does.
    """

    prefix: bytes
    fd: int
    offset: int
    count: int
    owned: bool  # a duplicate to close; else the store's descriptor of the live database (never closed)
    done: Callable[[], None] | None = None  # a pinned database's range: the pin may end once it is sent

    def close(self) -> None:
        """Release the descriptor (closing one of the live database would drop SQLite's locks: not done)."""
        if self.owned:
            os.close(self.fd)
        if self.done is not None:
            self.done()


class BackupManager(SessionEnding[_Session]):
    """One CA's backup sessions (spec §2.20); every method is thread-safe.

    How a session ends without BackupEnd (idle, client gone, abort) and its status: :class:`SessionEnding`.

    :param authority_or_store: the CA (``Authority``: its store and dynamic files) or a bare ``Store``.
    :param home: the CA home (staging area, published files).
    :param timeout: seconds a session may stay idle before :meth:`expire_idle` ends it (the ceiling).
    :param idle_timeout: the shorter limit once the session reads files (default: ``timeout``; never above it).
    :param clock: monotonic clock (tests pass their own).

    Every session call takes ``handle`` (the session handle) and ``principal_id`` (when given, the session must
    belong to this caller).
    """

    def __init__(self, authority_or_store: _HasStore | CAStore, home: Home, timeout: float = 600.0,
                 *, idle_timeout: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(authority_or_store, (Store, PgStore)):
            self.store: CAStore = authority_or_store
            self._authority: _HasStore | None = None
        else:
            self.store = authority_or_store.store
            self._authority = authority_or_store
        self.home = home
        self.timeout = float(timeout)
        self.idle_timeout = min(float(idle_timeout), self.timeout) if idle_timeout else self.timeout
        self._clock = clock
        self._ended: dict[str, str] = {}  # handle -> why the server ended it (the holder's next call says so)
        self.last_ended: dict[str, Any] | None = None  # status of the session the service ended last
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._claim_renewed = 0.0
        self._clean_staging()

    # ------------------------------------------------------------------ helpers

    def _clean_staging(self) -> None:
        """Remove snapshots left by a service that died mid-backup (no session survives a restart)."""
        d = self.home.staging_dir
        if d.is_dir():
            for p in d.iterdir():
                if p.is_dir() and not p.is_symlink() and p.name.startswith("backup-"):
                    shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def _use(self, handle: str, function: str, principal: str | None = None) -> Iterator[_Session]:
        """The live session for ``handle``, locked and marked busy; E_UNEXPECTED when there is none."""
        with self._lock:
            s = self._session
            if s is None or not secrets.compare_digest(s.handle, str(handle)) or (
                principal is not None and s.principal != principal
            ):
                # spec §2.20: anything but Prepare in state IDLE -> 0x8000FFFF.
                why = self._ended.get(str(handle))
                raise SequenceError(E_UNEXPECTED, function,
                                    f"the backup session was ended by the service ({why}); run the backup again"
                                    if why else "no backup session with this handle (never prepared, ended or "
                                    "expired)")
            s.busy += 1
        try:
            with s.lock:
                if s.ended or not s.ready:
                    raise SequenceError(E_UNEXPECTED, function, "the backup session has ended")
                s.last_activity = self._clock()
                yield s
                s.last_activity = self._clock()
        finally:
            with self._lock:
                s.busy -= 1

    def _required(self, s: _Session) -> list[str]:
        """Files that must be read to their end before TruncateLogs (spec §2.9)."""
        req = list(s.log_names or [])
        if s.kind == FULL:
            req += s.db_names
        return req

    def _complete(self, s: _Session) -> bool:
        return s.log_names is not None and all(n in s.done for n in self._required(s))

    def _dynamic_paths(self) -> list[Path]:
        if self._authority is not None:
            paths = [Path(p) for p in self._authority.dynamic_files()]
        else:
            d = self.home.publish_dir
            paths = sorted(p for p in d.iterdir()) if d.is_dir() else []
        return [p.absolute() for p in paths if p.is_file() and not p.is_symlink()]

    # ------------------------------------------------------------------ spec §2.20 events

    def prepare(self, principal_id: str, grbit: int = 0, flags: int = CSBACKUP_TYPE_FULL) -> str:
        """BackupPrepare: start a session, return its handle.

        :param principal_id: who asks (a second Prepare by the same caller is a sequence error).
        :param grbit: ``grbitJet`` (0, or 1 = JET_bitBackupIncremental).
        :param flags: ``dwBackupFlags`` (0/1 full, 2 logs only).
        """
        fn = "BackupPrepare"
        kind = decode_backup_type(int(grbit), int(flags))
        with self._lock:
            cur = self._session
            if cur is not None:
                if cur.principal == principal_id:
                    raise SequenceError(E_UNEXPECTED, fn,
                                        "this caller already has a backup in progress; call BackupEnd first")
                raise Conflict(JET_ERR_BACKUP_IN_PROGRESS, fn,
                               f"another backup is in progress (by {cur.principal}, started "
                               f"{cur.started.isoformat(timespec='seconds')})")
            if kind == INCREMENTAL:
                check_incremental_allowed(self.store, fn)
            handle = secrets.token_hex(16)
            s = _Session(handle, principal_id, kind, datetime.now(UTC),
                         self.home.staging_dir / f"backup-{handle}", self._clock())
            self._session = s
        with s.lock:
            try:
                self._claim(s)
                if kind == FULL:
                    snap = s.snapshot = self.store.open_snapshot()
                    s.snapshot_lsn = snap.lsn
                    s.gen_low = snap.generation
                    # spec §1.3/1.4: the listed name is the live database's path (the wire contract).
                    s.db_names = [str(self.home.db_dir / snap.name)]
                else:
                    hist = backup_history(self.store)
                    s.gen_low = hist[-1].gen_high + 1
                s.ready = True
                s.last_activity = self._clock()
            except BaseException:
                self._release(s)
                raise
        return handle

    def _claim(self, s: _Session) -> None:
        """Issue 14: claim the CA's one backup slot cluster-wide (:mod:`.nodes`)."""
        s.claim_id = claim_backup(self.store, self.timeout)
        self._claim_renewed = self._clock()

    def info(self, handle: str, principal_id: str | None = None) -> dict[str, Any]:
        """What a client needs to label the set: kind, CA name, database identity, handle.

        """
        with self._use(handle, "BackupInfo", principal_id) as s:
            return {"handle": s.handle, "kind": s.kind, "ca_name": self.store.name,
                    "identity": self.store.identity, "phase": s.phase,
                    "started": s.started.isoformat(), "snapshot_lsn": s.snapshot_lsn,
                    "gen_low": s.gen_low, "gen_high": s.gen_high, "lineage": s.lineage}

    def lineage(self, handle: str, principal_id: str | None = None) -> list[dict[str, int]] | None:
        """The epoch runs of the generations listed by BackupGetBackupLogs (None before it; issue 14)."""
        with self._use(handle, "BackupGetBackupLogs", principal_id) as s:
            return None if s.lineage is None else [dict(r) for r in s.lineage]

    def database_names(self, handle: str, principal_id: str | None = None) -> list[str]:
        """BackupGetDatabaseNames: the database file, tagged 'D' (full backups only).

        """
        fn = "BackupGetDatabaseNames"
        with self._use(handle, fn, principal_id) as s:
            if s.kind != FULL:
                # CSRA §3.1.4.1.18: SHOULD fail with 0xC8000209 without a full BackupPrepare.
                raise SequenceError(JET_ERR_INVALID_BACKUP_SEQUENCE, fn,
                                    "a logs-only backup has no database files")
            no_open_file(s, fn)
            if s.phase != PHASE_DB:
                # ESE-LogInfo: once the log list was given, database files are no longer part of the backup.
                raise SequenceError(E_UNEXPECTED, fn, "the log list was already requested")
            s.db_listed = True
            return [TAG_CERTSERVER_DATABASE + n for n in s.db_names]

    def backup_logs(self, handle: str, principal_id: str | None = None) -> list[str]:
        """BackupGetBackupLogs: roll the log (first call) and list the generations, tagged '!'.

        """
        fn = "BackupGetBackupLogs"
        with self._use(handle, fn, principal_id) as s:
            no_open_file(s, fn)
            if s.log_names is None:
                assert s.gen_low is not None
                rolled = self.store.roll_log()
                gens = {g.generation for g in self.store.generations()}
                names: list[str] = []
                for g in range(s.gen_low, rolled + 1):
                    if g not in gens:
                        raise CorruptData(JET_ERR_MISSING_FILE_TO_BACKUP, fn,
                                          f"log generation {log_name(g)} is needed by this backup but is gone")
                    name = str(self.home.log_dir / log_name(g))  # spec §1.3/1.4: the listed name
                    s.log_gens[name] = g
                    names.append(name)
                s.gen_high = rolled
                s.log_names = names
                s.lineage = lineage_runs(self.store, s.gen_low, rolled)
                if s.phase == PHASE_DB:
                    s.phase = PHASE_LOGS
                # The snapshot can no longer be opened (spec §2.4): end the pin, or free the copy's disk space.
                self._unpin(s)
            return [TAG_LOG + n for n in s.log_names]

    def dynamic_files(self, handle: str, principal_id: str | None = None) -> list[str]:
        """BackupGetDynamicFileList: published CA certificates and CRLs, untagged (spec §2.5).

        """
        with self._use(handle, "BackupGetDynamicFileList", principal_id) as s:
            names = [str(p) for p in self._dynamic_paths()]
            s.dynamic_names = sorted(set(s.dynamic_names) | set(names))
            return names

    def database_locations(self, handle: str, principal_id: str | None = None) -> list[str]:
        """RestoreGetDatabaseLocations on a backup context: 'D' db file, 0x82 log dir, 0x83 system dir.

        """
        with self._use(handle, "RestoreGetDatabaseLocations", principal_id):
            return [TAG_CERTSERVER_DATABASE + str(self.home.db_dir / self.store.database_name),
                    TAG_LOG_DIR + str(self.home.log_dir),
                    TAG_CHECKPOINT_DIR + str(self.home.system_dir)]

    def open_file(self, handle: str, name: str, principal_id: str | None = None) -> int:
        """BackupOpenFile: open a listed file (tag removed); returns its size in bytes.

        :param name: a name from this session's database, log or dynamic list, without its tag.
        """
        fn = "BackupOpenFile"
        with self._use(handle, fn, principal_id) as s:
            if s.open is not None:
                raise SequenceError(E_UNEXPECTED, fn, f"called while {Path(s.open.name).name} is open")
            name = str(name)
            if s.db_listed and name in s.db_names:
                if s.phase != PHASE_DB:
                    raise SequenceError(E_UNEXPECTED, fn,
                                        f"{Path(name).name}: database files cannot be opened after the log list "
                                        "was requested")
                assert s.snapshot is not None
                s.open = _OpenFile(name, s.snapshot.size, stream=s.snapshot)
                s.reading = True
                return int(s.snapshot.size)
            if s.log_names is not None and name in s.log_names:
                gen = self.store.open_generation(s.log_gens[name])
                s.open = _OpenFile(name, gen.size, stream=gen, owns_stream=True)
                s.reading = True
                return int(gen.size)
            if name not in s.dynamic_names:
                # CSRA §3.1.4.1.22: only names this session listed; nothing else is looked at.
                raise NotFound(ERROR_FILE_NOT_FOUND, fn, f"{name!r} is not a file listed by this backup session")
            path = Path(name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(ERROR_FILE_NOT_FOUND, fn, f"{path.name} no longer exists") from None
            except OSError as e:
                # ELOOP: the listed path is now a symlink.
                raise AccessDenied(E_ACCESSDENIED, fn, f"{path.name} cannot be opened safely: {e.strerror}") from None
            try:
                st = check_listed_file(fd, path, self.home.root)
            except BaseException:
                os.close(fd)
                raise
            s.open = _OpenFile(name, st.st_size, fd=fd)
            s.reading = True
            return int(st.st_size)

    def read(self, handle: str, n: int, principal_id: str | None = None) -> bytes:
        """BackupRead: the next at most ``n`` bytes (at most MAX_READ) of the open file; b"" at its end.

        :param n: bytes wanted (> 0).
        """
        with self._use(handle, "BackupRead", principal_id) as s:
            f = _reading(s, n)
            want = min(int(n), MAX_READ, max(f.size - f.pos, 0))
            data = f.read(want)
            f.pos += len(data)
            s.bytes_sent += len(data)
            return data

    def read_range(self, handle: str, n: int, principal_id: str | None = None) -> ReadRange:
        """BackupRead for zero-copy senders: the next chunk as a :class:`ReadRange`, position advanced.

        The chunk is ``prefix`` (only a pinned database's header) followed by ``count`` bytes of ``fd`` at
        ``offset``; it is empty at the end of the file. The caller closes the range once sent (End or
        expiry cannot pull the file away mid-send).

        :param n: bytes wanted (> 0; at most MAX_SEND are given).
        """
        with self._use(handle, "BackupRead", principal_id) as s:
            f = _reading(s, n)
            count = min(int(n), MAX_SEND, max(f.size - f.pos, 0))
            offset = f.pos
            f.pos += count
            s.bytes_sent += count
            if f.stream is None:
                return ReadRange(b"", os.dup(f.fd), offset, count, True)
            # The store's range stays valid until released, even if the session ends meanwhile (expiry
            # during a very slow send): a pinned snapshot must not change pages still to be sent.
            rng = f.stream.file_range(offset, count)
            if rng is None:  # an engine without a local file: the bytes themselves
                return ReadRange(f.stream.read(offset, count), -1, 0, 0, False)
            return ReadRange(rng.prefix, rng.fd, rng.offset, rng.count, False, rng.release)

    def close_file(self, handle: str, principal_id: str | None = None) -> None:
        """BackupClose: close the open file; it counts as backed up when it was read to its end.

        """
        with self._use(handle, "BackupClose", principal_id) as s:
            f = _the_open_file(s, "BackupClose")
            f.close()
            s.open = None
            if f.pos >= f.size:
                s.done.add(f.name)

    def truncate_logs(self, handle: str, principal_id: str | None = None) -> list[int]:
        """BackupTruncateLogs: delete the generations this backup made redundant; returns their numbers.

        """
        fn = "BackupTruncateLogs"
        with self._use(handle, fn, principal_id) as s:
            no_open_file(s, fn)
            if s.log_names is None:
                raise SequenceError(E_UNEXPECTED, fn, "the log list was not requested, so the backup is not complete")
            missing = [n for n in self._required(s) if n not in s.done]
            if missing:
                # spec §2.9 / CSRA §3.1.4.1.18: every listed DB and log file must be backed up first.
                raise SequenceError(E_UNEXPECTED, fn,
                                    f"{Path(missing[0]).name} was not read to its end"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            assert s.gen_high is not None
            # Never delete a generation crash recovery still needs: checkpoint first, then stop at its
            # generation. Everything below gen_high+1 is in this backup or in earlier recorded ones.
            cp = self.store.checkpoint()
            below = min(s.gen_high + 1, cp.generation)
            deleted = self.store.truncate_logs(below)
            s.truncated = True
            s.truncated_gens = sorted(set(s.truncated_gens) | set(deleted))
            s.phase = PHASE_TRUNCATED
            return deleted

    def end(self, handle: str, principal_id: str | None = None) -> dict[str, Any]:
        """BackupEnd: finish the session, record it when complete, release the lock.

        :returns: ``{"recorded": bool, "backup_id": int|None}``.
        """
        with self._use(handle, "BackupEnd", principal_id) as s:
            return self._finish(s, aborted=False)

    def close(self) -> None:
        """Abort any session (service shutdown)."""
        with self._lock:
            s = self._session
        if s is not None:
            with s.lock:
                if not s.ended:
                    self._finish(s, aborted=True)

    # ------------------------------------------------------------------ end of a session

    def _finish(self, s: _Session, *, aborted: bool) -> dict[str, Any]:
        """Close, record (complete or truncated), remove staging, release the CA-wide lock."""
        result: dict[str, Any] = {"recorded": False, "backup_id": None}
        try:
            if s.open is not None:
                # spec §2.20 [INF]: End implicitly closes an open file.
                s.open.close()
                s.open = None
            if s.truncated or (not aborted and self._complete(s)):
                result["backup_id"] = record_backup(self.store, s)
                result["recorded"] = True
        finally:
            self._release(s)
        return result


    @staticmethod
    def _unpin(s: _Session) -> None:
        """End the snapshot stream (a range of it still being sent keeps what it needs until released)."""
        snap, s.snapshot = s.snapshot, None
        if snap is not None:
            snap.close()

    def _release(self, s: _Session) -> None:
        s.ended = True
        if s.claim_id is not None:
            cid, s.claim_id = s.claim_id, None
            release_backup(self.store, cid, self.timeout)
        if s.open is not None:
            s.open.close()
            s.open = None
        self._unpin(s)
        shutil.rmtree(s.staging, ignore_errors=True)
        with self._lock:
            if self._session is s:
                self._session = None


__all__ = [
    "BackupManager",
    "ReadRange",
]
