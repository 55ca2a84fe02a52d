"""Crash-safe file helpers: temp name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import ERROR_SHARING_VIOLATION, Conflict

CHUNK = 1 << 20
# A CA home is private (issue 9, finding 3): directories 0700 and files 0600, except publish/ (for web
# publication). Modes are set on the descriptor after creation, so the caller's umask neither widens nor
# narrows them.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_DIR = 0o755
PUBLIC_FILE = 0o644


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    :param path: the final name; a temp name beside it is written, fsynced and renamed.
    :param data: the whole content.
    :param mode: permission bits of the new file (exactly, whatever the umask).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    written = False
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        written = True
    finally:
        os.close(fd)
        if not written:
            # A failed write (full disk, EIO) leaves no .tmp-* file behind to hold the space (issue 10).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_file(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Create ``path`` empty (replacing nothing: it must not exist) with exactly ``mode``.

    Used before handing a new name to SQLite: SQLite creates a database with the umask's mode, and its
    ``-wal``/``-shm``/``-journal`` files with the database file's mode, so creating the file first makes
    all of them private.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def copy_file(src: Path, dest: Path, mode: int = PRIVATE_FILE) -> None:
    """Copy ``src`` to a new or truncated ``dest`` with exactly ``mode`` (not fsynced: the caller does).

    ``shutil.copyfile`` would create ``dest`` with the umask's mode: a world-readable window for a
    database copy.
    """
    with open(src, "rb") as f:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(f, out, CHUNK)
        finally:
            os.close(fd)


def make_dirs(path: Path, mode: int = PRIVATE_DIR) -> None:
    """``mkdir -p`` where every directory created gets exactly ``mode`` (existing ones are left alone)."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        os.chmod(d, mode)  # mkdir's mode is narrowed by the umask


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """fsync an existing file by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: Path, dest: Path) -> None:
    """Make a finished temp file durable and put it in place: fsync it, rename it over ``dest``, fsync the
    directory (crash-safe files: a reader finds the old file or the whole new one, never part of one)."""
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


class HomeLock:
    """An exclusive ``flock`` on a home, with the holder's pid written inside.

    :param home: the CA home directory.
    :param purpose: what the holder does (shown to a second opener).
    """

    FILENAME = ".lock"

    def __init__(self, home: Path, purpose: str = "open") -> None:
        self.home = Path(home)
        self.path = self.home / self.FILENAME
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``Conflict`` (ERROR_SHARING_VIOLATION) naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder() or "unknown pid"
            os.close(fd)
            raise Conflict(
                ERROR_SHARING_VIOLATION,
                str(self.home),
                f"home is in use by another process ({holder}); stop it first",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {self.purpose}\n".encode())
        self._fd = fd

    def holder(self) -> str | None:
        """The text the current holder wrote (``pid N purpose``), if any."""
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def is_held(self) -> bool:
        """Whether some process (possibly this one) holds the lock now."""
        if self._fd is not None:
            return True
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path) -> Iterator[None]:
    """Remove ``paths`` (files or trees) if the body raises; used for staging areas."""
    try:
        yield
    except BaseException:
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        raise
