"""Where archived generations go: a directory, or an archive_command (issue 13).

Immutable files (PostgreSQL's archive_command rule): a file is written under a temporary name,
fsynced, renamed into place, and its directory fsynced; sending identical bytes under an existing
name is accepted (a ship repeated after a crash); different bytes under an existing name is a
:class:`ArchiveConflict`, which stops archiving until an operator looks.

``python -m pycertsrv.archive.destination SRC DEST_FILE`` stores one file by the same rule, for
``command`` set-ups that copy to a mounted filesystem (``command = "python3 -m
pycertsrv.archive.destination %p /mnt/ca/%f"``).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import (
    E_INVALIDARG,
    ERROR_FILE_EXISTS,
    ERROR_IO_DEVICE,
    CertSrvError,
    Conflict,
    InvalidArgument,
    StorageError,
)
from ..fsutil import copy_file, fsync_dir, publish_file
from ..store import ByteStream

ARCHIVE_FILE_MODE = 0o400  # archived generations are immutable and hold every request: owner read only
ARCHIVE_DIR_MODE = 0o700
CHUNK = 1 << 20  # bytes read from a stream at a time


class ArchiveConflict(Conflict):
    """Different bytes exist under the name being shipped: archiving stops (never overwritten)."""


def archive_name(identity: str, lineage: str, name: str) -> str:
    """The relative archive name of a generation: ``<identity>/<lineage>/<edbX.log>``.

    Both ids are hex (refused otherwise): they become path components and a command's arguments.
    """
    for what, v in (("identity", identity), ("lineage", lineage)):
        if not v or not all(c in "0123456789abcdef" for c in v):
            raise InvalidArgument(E_INVALIDARG, "archive", f"the database's {what} {v!r} is not a hex id")
    return f"{identity}/{lineage}/{name}"


def store_file(src: Path, dest: Path) -> str:
    """Store ``src`` at ``dest`` immutably; returns ``"stored"`` or ``"identical"`` (already there).

    :raises ArchiveConflict: ``dest`` exists with other bytes.
    :raises StorageError: the destination cannot be written (retried by the shipper).
    """
    return _store(src.name, dest, lambda d: filecmp.cmp(src, d, shallow=False),
                  lambda tmp: copy_file(src, tmp, ARCHIVE_FILE_MODE))


def store_stream(src: ByteStream, dest: Path) -> str:
    """:func:`store_file` for a generation stream read from the store (issue 11: no engine file is named)."""
    return _store(src.name, dest, lambda d: _same_bytes(src, d), lambda tmp: write_stream(src, tmp, ARCHIVE_FILE_MODE))


def write_stream(src: ByteStream, path: Path, mode: int) -> None:
    """Write a stream's bytes to a new file ``path`` (created with ``mode``), read in chunks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        pos = 0
        while pos < src.size:
            chunk = src.read(pos, CHUNK)
            if not chunk:
                raise OSError(f"{src.name} ended at {pos} of {src.size} bytes")
            os.write(fd, chunk)
            pos += len(chunk)
    finally:
        os.close(fd)


def _same_bytes(src: ByteStream, dest: Path) -> bool:
    if dest.stat().st_size != src.size:
        return False
    with open(dest, "rb") as f:
        pos = 0
        while pos < src.size:
            mine = src.read(pos, CHUNK)
            if f.read(len(mine)) != mine:
                return False
            pos += len(mine)
    return True


def _store(name: str, dest: Path, same: Callable[[Path], bool], write: Callable[[Path], None]) -> str:
    what = f"archive {dest}"
    try:
        if dest.exists():
            if same(dest):
                return "identical"
            raise ArchiveConflict(ERROR_FILE_EXISTS, str(dest),
                                  f"{dest.name} is already archived with different bytes; archiving stopped "
                                  "(an archive file is never overwritten): check whether another CA or an older "
                                  "history writes to this destination, then move the file aside")
        for d in (dest.parent.parent.parent, dest.parent.parent, dest.parent):
            if not d.exists():
                d.mkdir(mode=ARCHIVE_DIR_MODE, exist_ok=True)
                fsync_dir(d.parent)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            publish_file(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return "stored"
    except OSError as e:
        raise StorageError(ERROR_IO_DEVICE, what, f"cannot store {name}: {e.strerror or e}") from None


def _expand(command: str, path: Path, rel: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(command):
        c = command[i]
        if c == "%" and i + 1 < len(command):
            n = command[i + 1]
            if n in "pf%":
                out.append(shlex.quote(str(path)) if n == "p" else shlex.quote(rel) if n == "f" else "%")
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


class Destination:
    """A configured target: ``dest`` directory or ``command``.

    :param dest: the archive directory.
    :param command: archive_command (``%p`` path, ``%f`` relative archive name).
    :param command_timeout: seconds a command may run before it counts as failed.
    """

    def __init__(self, *, dest: str | None = None, command: str | None = None, command_timeout: float = 600.0,
                 base: Path | None = None) -> None:
        self.dest = None if dest is None else (Path(dest) if Path(dest).is_absolute() or base is None
                                               else base / dest)
        self.command = command
        self.command_timeout = command_timeout

    def describe(self) -> str:
        """Where it ships to (for status)."""
        return str(self.dest) if self.dest is not None else f"command: {self.command}"

    def put_stream(self, src: ByteStream, rel: str) -> str:
        """Ship one generation read from the store; a command gets it as a private temporary file (``%p``)."""
        if self.dest is not None:
            return store_stream(src, self.dest / rel)
        with tempfile.TemporaryDirectory(prefix="certsrv-archive-") as d:  # 0700
            path = Path(d) / src.name  # %p's base name is the generation's name, as before
            write_stream(src, path, ARCHIVE_FILE_MODE)
            return self.put(path, rel)

    def put(self, src: Path, rel: str) -> str:
        """Ship one generation under its relative archive name; ``"stored"`` or ``"identical"``."""
        if self.dest is not None:
            return store_file(src, self.dest / rel)
        assert self.command is not None
        cmd = _expand(self.command, src, rel)
        try:
            r = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, timeout=self.command_timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            raise StorageError(ERROR_IO_DEVICE, "archive command",
                               f"timed out after {self.command_timeout:g}s shipping {src.name}") from None
        if r.returncode != 0:
            err = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
            last = err[-1] if err else ""
            if r.returncode == 3 and "different bytes" in last:  # our own helper's conflict (see _main)
                raise ArchiveConflict(ERROR_FILE_EXISTS, "archive command", last)
            raise StorageError(ERROR_IO_DEVICE, "archive command",
                               f"exit status {r.returncode} shipping {src.name}" + (f": {last}" if last else ""))
        return "stored"


def _main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pycertsrv.archive.destination SRC DEST_FILE", file=sys.stderr)
        return 2
    try:
        print(store_file(Path(argv[0]), Path(argv[1])))
    except ArchiveConflict as e:
        print(f"certsrv: {e}", file=sys.stderr)
        return 3
    except CertSrvError as e:
        print(f"certsrv: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
