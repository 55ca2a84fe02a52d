"""Helpers for the backup-set tests: the rows a restore must bring back, and whether a restored home opens with
exactly them. Sets over a bare store (``full_set``, ``incremental_set``...) are in ``tests/support.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import support
from pycertsrv.backup.local import LocalSession
from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from pycertsrv.errors import CertSrvError
from pycertsrv.spec import INCREMENTAL
from pycertsrv.store import Store
from support import IGNORED_SETTINGS, rows


def _ca_only(r: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Leave out what is not the CA's: backup bookkeeping written at End, and settings a restore writes."""
    r.pop("backup_history")
    r["setting"] = [x for x in r["setting"]
                    if x["name"] not in IGNORED_SETTINGS and not x["name"].startswith("DBLast")]
    return r


def ca_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The rows a restore must bring back (backup bookkeeping rows written at End are left out)."""
    return _ca_only(rows(store))


def db_rows_readonly(home: Path) -> dict[str, list[dict[str, Any]]]:
    """:func:`ca_rows` of a running CA's database, read through a read-only SQLite connection."""
    return _ca_only(support.db_rows_readonly(home))


def opened_state(home: Path, want: dict[str, Any]) -> str:
    """'ok' when the CA opens with exactly the wanted rows, 'refused' on a clear CertSrvError; else fail."""
    try:
        a = Authority.open(home)
    except CertSrvError as e:
        assert e.hresult and e.message  # a clear refusal
        return "refused"
    try:
        assert ca_rows(a.store) == want, "a CA started with partial data"
        return "ok"
    finally:
        a.close()


def full_and_incremental(a: Authority, work: Path, password: bytes | str, n_full: int, n_incr: int
                         ) -> dict[str, list[dict[str, Any]]]:
    """With the real writer over an in-process session: issue ``n_full``, write ``work/full`` (with the key); issue
    ``n_incr`` more, write ``work/i1`` (database only). Returns the rows a restore of both must bring back."""
    with support.backup_manager(a, 60) as m:
        support.issue(a, n_full)
        run_backup(lambda k: LocalSession(m, k), work / "full", password=password, home=a.home, keep_log=True)
        support.issue(a, n_incr, "i")
        want = ca_rows(a.store)
        run_backup(lambda k: LocalSession(m, k), work / "i1", kind=INCREMENTAL, database_only=True,
                   password=password)
    return want
