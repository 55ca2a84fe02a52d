"""Backup streams of the PostgreSQL engine (the :mod:`..interface` ByteStream contract).

PostgreSQL's bytes are not in a local file, so a stream is materialised first into a private scratch
file (a snapshot: the SQLite file of :func:`.exports.snapshot_to_sqlite`; a generation: its ``edb`` file
from :func:`.exports.export_generation`), read by range and deleted at ``close()``. Its size and bytes
are fixed from then on, whatever commits run meanwhile. Being a local file, it also offers the zero-copy
:class:`..interface.FileRange`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from ...errors import E_UNEXPECTED, CertSrvError
from ..interface import FileRange


class ScratchStream:
    """A scratch file read by range; the file is unlinked at once (only our descriptor keeps it)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        path.unlink()
        self.size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self._ranges = 0
        self._closing = False

    def _check(self) -> None:
        if self._fd < 0 or self._closing:
            raise CertSrvError(E_UNEXPECTED, self.name, "the stream is closed")

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset .. offset+n`` (fewer only at the end)."""
        self._check()
        if offset >= self.size or n <= 0:
            return b""
        n = min(n, self.size - offset)
        out = bytearray()
        while len(out) < n:
            chunk = os.pread(self._fd, n - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def file_range(self, offset: int, n: int) -> FileRange | None:
        """The same bytes for a zero-copy sender; the descriptor stays open until ``release``."""
        self._check()
        count = max(0, min(n, self.size - offset))
        with self._lock:
            self._ranges += 1
        return FileRange(b"", self._fd, offset, count, self._range_done)

    def _range_done(self) -> None:
        with self._lock:
            self._ranges -= 1
            if self._closing and self._ranges == 0:
                self._end()

    def _end(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Release the scratch file (idempotent; waits for handed-out ranges to be released)."""
        with self._lock:
            self._closing = True
            if self._ranges == 0:
                self._end()


class PgSnapshotStream(ScratchStream):
    """The tables at ``lsn`` as a SQLite database file."""

    def __init__(self, name: str, path: Path, lsn: int, generation: int) -> None:
        super().__init__(name, path)
        self.lsn = lsn
        self.generation = generation


class PgGenerationStream(ScratchStream):
    """One generation as its ``edb`` file."""

    def __init__(self, name: str, path: Path, generation: int, first_lsn: int, last_lsn: int) -> None:
        super().__init__(name, path)
        self.generation = generation
        self.first_lsn = first_lsn
        self.last_lsn = last_lsn


def scratch_dir(home: Path | None) -> Path:
    """A private directory for scratch files: ``HOME/system`` when there is a home, else a new temp dir."""
    if home is not None and (home / "system").is_dir():
        return Path(tempfile.mkdtemp(prefix=".pgscratch-", dir=home / "system"))
    return Path(tempfile.mkdtemp(prefix="certsrv-pg-"))
