"""Streaming one file of a backup session into the set: received, hashed and written at once, with bounded memory
and bounded dirty data (the writer's I/O; :mod:`pycertsrv.backupset.writer` decides what goes where)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import (
    ERROR_INVALID_DATA,
    CorruptData,
)

WRITE_SLICE = 1 << 20


class SessionLike(Protocol):
    """What the writer needs from a backup session (network ``BackupSession`` or in-process ``LocalSession``)."""

    kind: str
    ca_name: str
    identity: str

    def database_locations(self) -> list[str]: ...
    def database_names(self) -> list[str]: ...
    def backup_logs(self) -> list[str]: ...
    def dynamic_files(self) -> list[str]: ...
    def open_file(self, name: str, hint: int = 0) -> int: ...
    def read(self, n: int) -> bytes: ...
    def close_file(self) -> None: ...
    def truncate_logs(self) -> Any: ...
    def end(self) -> Any: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...


@dataclass(frozen=True)
class Progress:
    """One progress report: ``phase`` (``Database files``, ``Log files``, ``Dynamic files``, ``Truncating logs``),
    the file, its size, bytes of it done so far and bytes added by this report."""

    phase: str
    name: str
    size: int
    done: int
    delta: int


ProgressCallback = Callable[[Progress], None]


# Receive buffers per file: one being received and written while others are hashed (memory: BUFFERS x chunk).
BUFFERS = 4
# 1 MiB buffers: received, written and hashed while still in the CPU caches (measured: less CPU than 4 MiB).
CHUNK = 1 << 20
# Writeback is started every WRITEBACK_WINDOW bytes and the window before is waited for (see _Writeback).
WRITEBACK_WINDOW = 8 << 20


def _libc_function(name: str, *argtypes: Any) -> Any:
    """A libc function by name (Linux: sync_file_range, fallocate), or None where there is none."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_FALLOCATE = _libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4  # <linux/fs.h>
_FALLOC_FL_KEEP_SIZE = 1  # <linux/falloc.h>


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks before streaming: a full disk fails now, not after most of the transfer,
    and the file is laid out in one piece. KEEP_SIZE: the size still grows only with what is written.
    Where fallocate(2) does not exist or the file system refuses it, blocks are allocated as written."""
    if _FALLOCATE is None or size <= 0:
        return
    if _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise OSError(err, os.strerror(err))


class _Writeback:
    """Keep a file's dirty data bounded while it is written: every WRITEBACK_WINDOW bytes, start writing
    the last window back and wait for the window before it (sync_file_range(2)). A backup then never holds
    hundreds of MB of dirty pages that the CA's own fsyncs would queue behind (ext4 data=ordered), and the
    final fsync is short. This is not a durability step: the file is still fsynced when complete.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.start = 0
        self.prev: tuple[int, int] | None = None

    def wrote(self, n: int) -> None:
        """Account ``n`` more bytes written at the end of the file."""
        self.pos += n
        if _SYNC_FILE_RANGE is None or self.pos - self.start < WRITEBACK_WINDOW:
            return
        # Errors are left to the final fsync, which reports them (as it would without this).
        _SYNC_FILE_RANGE(self.fd, self.start, self.pos - self.start, _SFR_WRITE)
        if self.prev is not None:
            _SYNC_FILE_RANGE(self.fd, self.prev[0], self.prev[1], _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)
        self.prev = (self.start, self.pos - self.start)
        self.start = self.pos


class Pacer:
    """Hold a backup to at most ``rate`` bytes per second on average (None: as fast as it goes).

    A full-speed backup saturates the disk the CA's own log fsyncs need; an operator trades backup
    time for a lighter load (as pg_basebackup --max-rate, rsync --bwlimit).
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start = clock()
        self.total = 0

    def __call__(self, n: int) -> None:
        """Account ``n`` bytes written; sleep until they are due."""
        if not self.rate:
            return
        self.total += n
        ahead = self.start + self.total / self.rate - self.clock()
        if ahead > 0:
            self.sleep(ahead)


class _Reader(Protocol):
    def __call__(self, buf: memoryview) -> int: ...


def _filler(session: SessionLike, chunk: int) -> _Reader:
    """``fill(buf)``: the next bytes of the open file into ``buf``, filled unless the file ends; 0 at its end.

    A session with ``readinto`` (the network session) receives straight into ``buf``; others are read
    ``chunk`` bytes at a time.
    """
    readinto = getattr(session, "readinto", None)

    def one(buf: memoryview) -> int:
        if readinto is not None:
            return int(readinto(buf))
        data = session.read(min(len(buf), chunk))
        buf[:len(data)] = data
        return len(data)

    def fill(buf: memoryview) -> int:
        got = 0
        while got < len(buf):
            n = one(buf[got:])
            if not n:
                break
            got += n
        return got

    return fill


def _hasher(h: Any, inq: queue.Queue[tuple[bytearray, int] | None], free: queue.Queue[bytearray]) -> None:
    """Hash buffers in the order received, then hand them back; hashlib releases the GIL for large
    buffers, so hashing runs beside receiving and writing."""
    while True:
        item = inq.get()
        if item is None:
            return
        buf, n = item
        h.update(memoryview(buf)[:n])
        free.put(buf)


def stream_file(session: SessionLike, name: str, dest: Path, phase: str, progress: ProgressCallback | None,
            chunk: int, pace: Pacer) -> tuple[int, str]:
    """Open ``name``, copy it to ``dest`` (fsynced), close; returns (size, sha256).

    This thread receives each buffer and writes it; a second thread hashes the buffers written, in
    order, and hands them back (BUFFERS buffers of ``chunk`` bytes: memory stays bounded). Only this
    thread calls the session; the hasher is joined before the fsync, so the digest covers every
    byte of the file.
    """
    size = session.open_file(name)
    h = hashlib.sha256()
    done = 0
    free: queue.Queue[bytearray] = queue.Queue()
    to_hash: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    hasher: threading.Thread | None = None
    try:
        bufsize = max(1, min(chunk, size + 1))  # one more byte: a small file ends within its first buffer
        for _ in range(BUFFERS):
            free.put(bytearray(bufsize))
        fill = _filler(session, chunk)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _reserve(fd, size)
            wb = _Writeback(fd)
            hasher = threading.Thread(target=_hasher, args=(h, to_hash, free), daemon=True)
            hasher.start()
            if progress:
                progress(Progress(phase, Path(name).name, size, 0, 0))
            while True:
                buf = free.get()
                n = fill(memoryview(buf))
                if not n:
                    break
                view = memoryview(buf)[:n]
                while view:
                    k = os.write(fd, view[:WRITE_SLICE])
                    view = view[k:]
                to_hash.put((buf, n))
                done += n
                wb.wrote(n)
                pace(n)
                if progress:
                    progress(Progress(phase, Path(name).name, size, done, n))
            to_hash.put(None)
            hasher.join()
            hasher = None
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        if hasher is not None:
            to_hash.put(None)
            hasher.join()
        session.close_file()
    if done != size:
        raise CorruptData(ERROR_INVALID_DATA, Path(name).name,
                          f"received {done} bytes but the server announced {size}")
    return size, h.hexdigest()
