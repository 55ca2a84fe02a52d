"""The SQLite database file: its name, connections and PRAGMAs, its side files, its header bytes.

Everything that knows SQLite's on-disk rules lives here (and only here): WAL mode and its ``-wal``/``-shm``
side files, the rollback ``-journal``, the file format's header bytes, the synchronous levels we pick.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from ...fsutil import copy_file, fsync_file, publish_file

DB_SUFFIX = ".db"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a database file
RECOVERING_SUFFIX = ".recovering"  # a registered restore's temp copy while hard recovery replays onto it
REPLAY_CACHE_KIB = 65536  # SQLite page cache while replaying (the default 2 MiB thrashes on large logs)
MAGIC = b"SQLite format 3\x00"
# What SQLite raises when a file is not a database, or a damaged one (callers above the store catch these).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)


def db_file_name(name: str) -> str:
    """The database file name for a CA name (path-safe)."""
    safe = "".join(c if (c.isalnum() or c in "-_ .") else "_" for c in name).strip(" .") or "ca"
    return f"{safe}{DB_SUFFIX}"


def database_files(db_dir: Path) -> list[Path]:
    """The database files of a database directory, sorted (a home has one)."""
    return sorted(p for p in db_dir.iterdir() if p.suffix == DB_SUFFIX)


def side_file(db_path: Path, suffix: str) -> Path:
    """``db_path`` + one of :data:`SIDE_SUFFIXES`."""
    return db_path.with_name(db_path.name + suffix)


def recovering_file(target: Path) -> Path:
    """The temp copy hard recovery replays onto before it replaces ``target`` (hidden, beside it)."""
    return target.with_name(f".{target.name}{RECOVERING_SUFFIX}")


def engine_files(db_dir: Path) -> list[Path]:
    """Every file of a database directory that belongs to the database, sorted: database files, their side
    files and recovery temps. A restore moves all of them aside together: a stale ``-wal`` left beside a new
    database file would be applied to it by SQLite."""
    return sorted(p for p in db_dir.iterdir() if p.is_file() and (
        p.suffix == DB_SUFFIX or f"{DB_SUFFIX}-" in p.name or RECOVERING_SUFFIX in p.name))


def is_disk_full(e: BaseException) -> bool:
    """Whether an SQLite or OS error means no space (SQLITE_FULL, ENOSPC, EDQUOT)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False


def connect(path: Path) -> sqlite3.Connection:
    """The live database's connection: WAL mode, relaxed sync (see the comment)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # Relaxed sync is safe: the redo log is the durable record and SQLite is rebuilt from it;
    # NORMAL in WAL mode keeps the file consistent across power loss (it may lose the tail).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A reading connection of the live database (rows as :class:`sqlite3.Row`)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def connect_for_replay(path: Path) -> sqlite3.Connection:
    """A connection for hard recovery: no per-commit syncs, journal in memory, a large cache.

    The file is fsynced once at the end (:func:`sync_database`): a process that dies meanwhile leaves a file to
    be discarded, which is why restores replay onto a temp copy.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=MEMORY")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(f"PRAGMA cache_size=-{REPLAY_CACHE_KIB}")
    return conn


def connect_plain(path: Path) -> sqlite3.Connection:
    """A connection with SQLite's defaults (a closed, private file: a copy, a temp, a new database)."""
    return sqlite3.connect(path, isolation_level=None)


def sync_database(db_path: Path) -> None:
    """fsync a database file and its WAL, if any."""
    fsync_file(db_path)
    wal = side_file(db_path, "-wal")
    if wal.exists():
        fsync_file(wal)


def rollback_header(head: bytes) -> bytes:
    """A database header as a rollback-journal file's: what a copy of a WAL-mode file must start with.

    sqlite.org/fileformat2.html §1.3.3: bytes 18/19 are 2 in WAL mode, 1 with a rollback journal.
    """
    out = bytearray(head)
    if len(out) >= 100 and out[:16] == MAGIC:
        out[18] = out[19] = 1
    return bytes(out)


def copy_database(src: Path, dest: Path) -> None:
    """Copy a closed database file durably (used when placing restored files)."""
    tmp = dest.with_name(dest.name + ".tmp")
    copy_file(src, tmp)
    publish_file(tmp, dest)
