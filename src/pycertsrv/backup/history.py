"""The record of backups (``backup_history`` and the last-backup settings) and what it allows next.

A backup is recorded (one store transaction) at End when it is complete, or whenever TruncateLogs ran,
because the truncated generations exist nowhere else and the next incremental must start after them.
An incremental needs a recorded full backup first (spec §2.2, §2.17).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ..errors import (
    JET_ERR_INVALID_BACKUP,
    JET_ERR_MISSING_FULL_BACKUP,
    Conflict,
)
from ..spec import FULL, wszREGDBLASTFULLBACKUP, wszREGDBLASTINCREMENTALBACKUP
from ..store import CAStore

SETTING_REQUIRES_FULL = "backup_requires_full"
# spec §1.3 wszREGDBLASTFULLBACKUP / wszREGDBLASTINCREMENTALBACKUP [INF]: last backup times.
SETTING_LAST_FULL = wszREGDBLASTFULLBACKUP
SETTING_LAST_INCREMENTAL = wszREGDBLASTINCREMENTALBACKUP
# Bytes the last full / incremental session sent (its set's size), recorded with its time (metrics).
SETTING_LAST_FULL_BYTES = "DBLastFullBackupBytes"
SETTING_LAST_INCREMENTAL_BYTES = "DBLastIncrementalBackupBytes"
TRUE_VALUES = {"1", "true", "yes", "on"}


class _Recorded(Protocol):
    """What is recorded of a session."""

    @property
    def kind(self) -> str: ...

    @property
    def started(self) -> datetime: ...

    @property
    def gen_low(self) -> int | None: ...

    @property
    def gen_high(self) -> int | None: ...

    @property
    def snapshot_lsn(self) -> int | None: ...

    @property
    def truncated(self) -> bool: ...

    @property
    def bytes_sent(self) -> int: ...


@dataclass(frozen=True)
class BackupRecord:
    """A row of ``backup_history``."""

    backup_id: int
    kind: str
    started_at: str
    ended_at: str
    gen_low: int
    gen_high: int
    snapshot_lsn: int | None
    truncated: bool


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def backup_history(store: CAStore) -> list[BackupRecord]:
    """Every recorded backup, oldest first.

    :param store: the open CA database.
    """
    rows = store.select("backup_history", order_by=["backup_id"])
    return [BackupRecord(int(r["backup_id"]), str(r["kind"]), str(r["started_at"]), str(r["ended_at"]),
                         int(r["gen_low"]), int(r["gen_high"]),
                         None if r["snapshot_lsn"] is None else int(r["snapshot_lsn"]), bool(r["truncated"]))
            for r in rows]


def check_incremental_allowed(store: CAStore, fn: str) -> None:
    """A logs-only backup may start: logs are kept, a full backup exists, and none is required (spec §2.2, §2.17).

    :param store: the open CA database.
    :param fn: the certbcli function named in a refusal.
    """
    # ESE refuses incremental backups under circular logging (spec §2.2, JET_errInvalidBackup).
    if store.circular_logging:
        raise Conflict(JET_ERR_INVALID_BACKUP, fn,
                       "circular logging is on: log generations are not kept, so no logs-only backup")
    hist = backup_history(store)
    if not any(r.kind == FULL for r in hist):
        raise Conflict(JET_ERR_MISSING_FULL_BACKUP, fn, "no full backup has been taken yet; take one first")
    flag = store.get("setting", SETTING_REQUIRES_FULL)
    if flag is not None and str(flag["value"]).strip().lower() in TRUE_VALUES:
        # spec §2.17: backups from before a restore must not be mixed with later ones; the store sets the
        # flag too, with its reason, when it finds log damage (pycertsrv.store.health).
        why = store.get("setting", SETTING_REQUIRES_FULL + "_reason")
        reason = why["value"] if why else "the database was restored since the last full backup"
        raise Conflict(JET_ERR_MISSING_FULL_BACKUP, fn, f"{reason}; take a full backup first")


def record_backup(store: CAStore, s: _Recorded) -> int:
    """Record a finished session in ``backup_history`` and the last-backup settings (one store transaction).

    :param store: the open CA database.
    :param s: the session (its kind, start, generations, snapshot LSN, truncation and bytes sent).
    """
    assert s.gen_low is not None and s.gen_high is not None
    ended = _now_iso()
    with store.transaction() as tx:
        bid = tx.next_id("backup_history")
        tx.put("backup_history", {
            "backup_id": bid, "kind": s.kind, "started_at": s.started.isoformat(), "ended_at": ended,
            "gen_low": s.gen_low, "gen_high": s.gen_high, "snapshot_lsn": s.snapshot_lsn,
            "truncated": 1 if s.truncated else 0})
        if s.kind == FULL:
            tx.put("setting", {"name": SETTING_LAST_FULL, "value": ended})
            tx.put("setting", {"name": SETTING_LAST_FULL_BYTES, "value": str(s.bytes_sent)})
            for name in (SETTING_REQUIRES_FULL, SETTING_REQUIRES_FULL + "_reason"):
                if tx.get("setting", name) is not None:
                    tx.delete("setting", name)
        else:
            tx.put("setting", {"name": SETTING_LAST_INCREMENTAL, "value": ended})
            tx.put("setting", {"name": SETTING_LAST_INCREMENTAL_BYTES, "value": str(s.bytes_sent)})
    return bid
