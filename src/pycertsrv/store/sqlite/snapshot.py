"""Snapshots and the byte streams backup reads: the database at one LSN, and each log generation.

A full backup reads the database without stopping writers. Preferred: the live file *pinned* in place
(:meth:`Snapshots.pin_snapshot`: a complete WAL checkpoint, then a read transaction during which no checkpoint
writes to the file); else a consistent copy (:meth:`Snapshots.snapshot`, SQLite's online backup). Either is
handed out as a :class:`~pycertsrv.store.interface.SnapshotStream` (:meth:`Snapshots.open_snapshot`); a
generation as a :class:`~pycertsrv.store.interface.GenerationStream` (:meth:`Snapshots.open_generation`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from ...errors import E_ACCESSDENIED, E_UNEXPECTED, ERROR_FILE_NOT_FOUND, AccessDenied, CertSrvError, NotFound
from ...fsutil import create_file, make_dirs, publish_file
from ...home import Home
from .. import logfile
from ..interface import FileRange
from .dbfile import rollback_header
from .state import EngineState


@dataclass(frozen=True)
class SnapshotInfo:
    """A consistent SQLite copy: the LSN it contains and the generation holding the next record."""

    path: Path
    lsn: int
    generation: int
    size: int


class _FdStream:
    """A stream over a descriptor (its bytes at ``0 .. size``), optionally with its first bytes replaced.

    ``owned``: the descriptor is the stream's (closed with it, ranges get a dup); else it belongs to the store
    and is never closed here (closing a descriptor of the live database drops SQLite's POSIX locks). ``on_end``
    runs once the stream is closed and no range of it is being sent any more (a pin must outlast the send).
    """

    def __init__(self, name: str, fd: int, size: int, *, head: bytes = b"", owned: bool = True,
                 on_end: contextlib.ExitStack | None = None) -> None:
        self.name = name
        self.size = size
        self._fd = fd
        self._head = head
        self._owned = owned
        self._on_end = on_end
        self._lock = threading.Lock()
        self._sending = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise CertSrvError(E_UNEXPECTED, "store", f"the stream of {self.name} is closed")

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset .. offset+n`` (fewer only at the end)."""
        self._check()
        want = max(0, min(int(n), self.size - int(offset)))
        data = os.pread(self._fd, want, offset) if want else b""
        if offset < len(self._head) and data:
            pre = self._head[offset:offset + len(data)]
            data = pre + data[len(pre):]
        return data

    def file_range(self, offset: int, n: int) -> FileRange | None:
        """The same bytes as :meth:`read`, for a zero-copy sender (release it once sent)."""
        self._check()
        count = max(0, min(int(n), self.size - int(offset)))
        pre = self._head[offset:offset + count] if offset < len(self._head) else b""
        if self._owned:
            fd = os.dup(self._fd)
            return FileRange(pre, fd, offset + len(pre), count - len(pre), lambda: os.close(fd))
        with self._lock:
            self._sending += 1
        return FileRange(pre, self._fd, offset + len(pre), count - len(pre), self._range_sent)

    def _range_sent(self) -> None:
        with self._lock:
            self._sending -= 1
            end = self._closed and not self._sending
        if end:
            self._end()

    def _end(self) -> None:
        pin, self._on_end = self._on_end, None
        if pin is not None:
            pin.close()

    def close(self) -> None:
        """Release the stream (a range being sent keeps what it needs until released)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            end = not self._sending
        if self._owned:
            os.close(self._fd)
        if end:
            self._end()


class SqliteSnapshotStream(_FdStream):
    """The database at ``lsn`` as the bytes of a rollback-journal SQLite file (see the interface)."""

    def __init__(self, name: str, fd: int, size: int, lsn: int, generation: int, *, head: bytes = b"",
                 owned: bool = True, on_end: contextlib.ExitStack | None = None) -> None:
        super().__init__(name, fd, size, head=head, owned=owned, on_end=on_end)
        self.lsn = lsn
        self.generation = generation


class SqliteGenerationStream(_FdStream):
    """One ``edbXXXXXXXX.log`` file's bytes."""

    def __init__(self, name: str, fd: int, size: int, generation: int, first_lsn: int, last_lsn: int) -> None:
        super().__init__(name, fd, size)
        self.generation = generation
        self.first_lsn = first_lsn
        self.last_lsn = last_lsn


SCRATCH_PREFIX = "snapshot-"  # scratch copies' directories in the staging area (stale ones go at open)


class Snapshots(EngineState):
    """The store's snapshots and streams (a part of :class:`~pycertsrv.store.sqlite.engine.Store`)."""

    def open_snapshot(self) -> SqliteSnapshotStream:
        """The database at one LSN, without stopping writers: the pinned live file, else a scratch copy."""
        pinned = self.pin_snapshot()
        if pinned is not None:  # read in place: no copy of the database
            info, head, fd, pin = pinned
            return SqliteSnapshotStream(info.path.name, fd, info.size, info.lsn, info.generation,
                                        head=head, owned=False, on_end=pin)
        # Unsynced scratch copy in a directory of its own, removed when the stream closes (and, after a crash,
        # at the next open): the copy does not outlive the stream.
        scratch = Home(self.home).staging_dir / f"{SCRATCH_PREFIX}{secrets.token_hex(8)}"
        make_dirs(scratch)  # private, whatever the umask (issue 9)
        cleanup = contextlib.ExitStack()
        cleanup.callback(shutil.rmtree, scratch, True)
        with cleanup:
            info = self.snapshot(scratch / self.db_path.name, durable=False)
            fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
            stream = SqliteSnapshotStream(self.db_path.name, fd, os.fstat(fd).st_size, info.lsn, info.generation,
                                          on_end=cleanup.pop_all())
        return stream

    def open_generation(self, number: int) -> SqliteGenerationStream:
        """Generation ``number``'s bytes: its whole file when closed, its durable records when open."""
        self._check_usable()
        name = logfile.log_name(number)
        path = self.log_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(ERROR_FILE_NOT_FOUND, name, f"log generation {number:08X} is no longer kept") from None
        except OSError as e:  # ELOOP: replaced by a symlink
            raise AccessDenied(E_ACCESSDENIED, name, f"{name} cannot be opened safely: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise AccessDenied(E_ACCESSDENIED, name, f"{name} is not the store's own log file")
            header = logfile.read_header(path)
            with self._write_lock:  # appends happen under it: whole records only
                current, size_open, last_open = self._gen, self._gen_size, self._appended_lsn
            if number == current:
                size, last = size_open, last_open
                os.fsync(fd)  # the records in the stream are durable (the contract), whatever group commit did
            else:
                size = st.st_size
                last = self._last_lsn_of(number, header.first_lsn)
        except BaseException:
            os.close(fd)
            raise
        return SqliteGenerationStream(name, fd, size, number, header.first_lsn, last)

    def _last_lsn_of(self, number: int, first: int) -> int:
        """A closed generation's last LSN: one below the next generation's first."""
        nxt = self.log_dir / logfile.log_name(number + 1)
        try:
            return logfile.read_header(nxt).first_lsn - 1
        except (OSError, CertSrvError):
            res, _ = logfile.scan(self.log_dir / logfile.log_name(number), None)
            return res.last_lsn if res.last_lsn is not None else first - 1

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
            publish_file(tmp, dest)
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
        head = rollback_header(os.pread(fd, 100, 0))
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
        return info, head, fd, pin

    def _database_fd(self) -> int:
        """A read-only descriptor of the database file, open until the store closes.

        POSIX record locks belong to the process: closing any descriptor of the file (even a dup) drops
        every lock SQLite holds on it, and another process closing its own connection could then take
        the database as unused and checkpoint and delete the WAL under us. So this descriptor is opened
        once and closed only after SQLite's connections (in ``_close_handles``).
        """
        with self._conns_lock:
            fd = self._db_fd
            if fd < 0:
                fd = os.open(self.db_path, os.O_RDONLY | os.O_CLOEXEC)
                self._db_fd = fd
            return fd

    # ---------------------------------------------------------------- reads
