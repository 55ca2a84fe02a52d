"""Reading a database file that no store has open: a backup set's copy, or a stopped home's database.

The backup set's checks (:mod:`pycertsrv.backupset`) and the archive's offline views
(:mod:`pycertsrv.archive`) need a few facts from such a file -- its ``_meta`` (identity, CA name, the LSN it
is at), its integrity, and ``setting`` values -- without opening a :class:`~pycertsrv.store.Store` (which would
recover it, and write). It is part of the SQLite engine, exported as ``pycertsrv.store.setdb``: callers name
no engine; nothing here writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UnreadableDatabase(Exception):
    """The file is not a readable database (missing, not SQLite, damaged); the message is the engine's."""


@contextmanager
def _read_only(path: Path, *, immutable: bool) -> Iterator[sqlite3.Connection]:
    # immutable=1: a set's file never changes under us, so SQLite takes no locks and writes no -shm;
    # a live home's file (immutable=False) is read through its WAL as the CA left it.
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise UnreadableDatabase(str(e)) from None
    try:
        yield conn
    except sqlite3.Error as e:
        raise UnreadableDatabase(str(e)) from None
    finally:
        conn.close()


def read_meta(path: Path) -> dict[str, str]:
    """The file's ``_meta`` (``identity``, ``name``, ``applied_lsn``, ...) as text; raises UnreadableDatabase.

    :param path: a database file nothing writes to (a backup set's copy).
    """
    with _read_only(path, immutable=True) as conn:
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM _meta")}


def check_integrity(path: Path) -> str:
    """The engine's integrity check of the whole file: ``"ok"``, else its first finding; raises UnreadableDatabase.

    :param path: a database file nothing writes to (a backup set's copy).
    """
    with _read_only(path, immutable=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def read_settings(path: Path, *, immutable: bool = True) -> dict[str, str]:
    """Every row of the ``setting`` table (name -> value); raises UnreadableDatabase.

    :param path: the database file.
    :param immutable: False for a home's live file (a stopped CA's, read through its WAL).
    """
    with _read_only(path, immutable=immutable) as conn:
        return {str(n): str(v) for n, v in conn.execute("SELECT name, value FROM setting")}


__all__ = ["UnreadableDatabase", "check_integrity", "read_meta", "read_settings"]
