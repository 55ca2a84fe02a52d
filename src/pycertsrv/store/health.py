"""The store's health: what it tells writers, readers and operators when the disk fills, a log sync
fails, or a log record is damaged.

States (``Store.health().state``; also ``GET /health`` and ``certsrv status``):

- ``ok``.
- ``degraded: disk full`` — a batch was made durable in the redo log but SQLite could not apply it
  (``SQLITE_FULL``). The records are committed: the writers got success, marked *committed, not yet
  applied* (:data:`COMMIT_NOTES`), and their request ids. Reads go on: a read by primary key sees the
  pending rows, lists and counts do not until they are applied. New writes are refused with
  ERROR_DISK_FULL after one more apply attempt. A background retry applies the records from the log as
  soon as SQLite can write again, and the state returns to ``ok`` without a restart. (Other apply
  errors give ``degraded: database apply error`` and are retried the same way.)
- ``failed: log sync error, restart required`` — the log's ``fdatasync`` failed. After a failed sync
  the kernel may have dropped the dirty pages and a later sync can "succeed" without writing them
  (PostgreSQL's fsyncgate, 2018): no write is ever answered as durable again by this process. Writes
  are refused with ERROR_IO_DEVICE; reads of applied (hence synced) state go on; the restart's
  recovery replays from what is really on disk.

Damage in a log record that is already applied (below the database's applied LSN) does not stop the
store: it is reported (log warning, ``log_damage`` in the health), and the next backup must be full,
because the chain for incrementals passes through the damaged generation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..commitnote import COMMIT_NOTES, COMMITTED_NOT_APPLIED, commit_note, commit_scope, note_unapplied
from ..errors import ERROR_DISK_FULL, ERROR_IO_DEVICE, StorageError
from ..fsutil import atomic_write

__all__ = [
    "COMMITTED_NOT_APPLIED",
    "COMMIT_NOTES",
    "DEGRADED_APPLY",
    "DEGRADED_DISK_FULL",
    "FAILED_DB_SYNC",
    "FAILED_SYNC",
    "OK",
    "Health",
    "commit_note",
    "commit_scope",
    "damage_key",
    "disk_full_error",
    "known_damage",
    "note_unapplied",
    "record_damage",
    "restore_advice",
    "sync_failed_error",
]

log = logging.getLogger("pycertsrv.store")

OK = "ok"
DEGRADED_DISK_FULL = "degraded: disk full"
DEGRADED_APPLY = "degraded: database apply error"
FAILED_SYNC = "failed: log sync error, restart required"
FAILED_DB_SYNC = "failed: database sync error, restart required"  # the checkpoint's fsync of SQLite failed

# Settings the store writes (logged, so a restore carries them) when it finds log damage. The backup
# layer refuses incrementals while SETTING_REQUIRES_FULL is set and shows the reason.
SETTING_REQUIRES_FULL = "backup_requires_full"
SETTING_REQUIRES_FULL_REASON = "backup_requires_full_reason"
DAMAGE_FILE = "log-damage.json"  # system/: damage already reported, so it marks a full backup only once

def disk_full_error(what: str, detail: str, *, degraded: bool = False) -> StorageError:
    """The refusal of a write while there is no space (ERROR_DISK_FULL).

    :param degraded: the store holds committed records it could not apply (it retries by itself);
        otherwise only this write was refused and the caller tries again once there is room.
    """
    then = ("the store applies what it holds by itself and accepts writes again without a restart (see "
            "certsrv status)" if degraded else "then try the call again (no restart needed)")
    return StorageError(ERROR_DISK_FULL, what, f"{detail}; free space on the CA home's filesystem: {then}")


def sync_failed_error(what: str, detail: str, state: str = FAILED_SYNC) -> StorageError:
    """The refusal of a write after a failed sync (ERROR_IO_DEVICE); ``state`` is FAILED_SYNC or FAILED_DB_SYNC."""
    return StorageError(ERROR_IO_DEVICE, what, f"store {state} ({detail}); no write is accepted until "
                        "the service is restarted (certsrv shutdown, then certsrv serve): its recovery replays "
                        "what is really on disk")


@dataclass
class Health:
    """A snapshot of the store's state for status displays."""

    state: str = OK
    detail: str = ""
    since: str | None = None
    unapplied: int = 0
    unapplied_lsns: tuple[int, int] | None = None
    log_damage: list[dict[str, Any]] = field(default_factory=list)
    backup_full_required: str | None = None

    @property
    def summary(self) -> str:
        """One line: the state, then what it means for the operator."""
        s = self.state
        if self.unapplied:
            s += f" ({self.unapplied} committed record(s) not yet applied)"
        if self.detail and self.state != OK:
            s += f": {self.detail}"
        if self.log_damage:
            d = self.log_damage[0]
            s += (f"; log damage in {d['file']} (record LSN {d['lsn']}, already applied)"
                  + (f" and {len(self.log_damage) - 1} more" if len(self.log_damage) > 1 else ""))
        if self.backup_full_required:
            s += "; the next backup must be full"
        return s

    def to_json(self) -> dict[str, Any]:
        """The health as plain data."""
        return {"state": self.state, "detail": self.detail, "since": self.since, "unapplied": self.unapplied,
                "unapplied_lsns": list(self.unapplied_lsns) if self.unapplied_lsns else None,
                "log_damage": self.log_damage, "backup_full_required": self.backup_full_required,
                "summary": self.summary}


# ---------------------------------------------------------------- damaged logs


def known_damage(system_dir: Path) -> list[dict[str, Any]]:
    """Damage already reported (``system/log-damage.json``); empty when none or unreadable."""
    try:
        doc = json.loads((system_dir / DAMAGE_FILE).read_bytes())
    except (OSError, ValueError):
        return []
    items = doc.get("damage") if isinstance(doc, dict) else None
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def damage_key(d: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one damage found: generation file, offset and LSN."""
    return (d.get("file"), d.get("offset"), d.get("lsn"))


def record_damage(system_dir: Path, damage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add newly found damage to the reported list; returns the entries that were new."""
    known = known_damage(system_dir)
    seen = {damage_key(d) for d in known}
    new = [d for d in damage if damage_key(d) not in seen]
    if new:
        atomic_write(system_dir / DAMAGE_FILE, json.dumps({"damage": known + new}, indent=1).encode())
    return new


def restore_advice(history: Sequence[tuple[int, str, str]] | None, home: Path) -> str:
    """What to restore when recovery needs a damaged record: the newest recorded set, and the command.

    :param history: the database's backup history as (backup_id, kind, ended_at) in id order; None when it
        could not be read (the advice then names no set).
    """
    newest = ""
    if history is not None:
        rows = list(history)
        fulls = [i for i, r in enumerate(rows) if r[1] == "full"]
        if fulls:
            full = rows[fulls[-1]]
            incs = [r for r in rows[fulls[-1] + 1:] if r[1] == "incremental"]
            newest = f"the newest recorded set is full backup #{full[0]} of {full[2]}"
            if incs:
                newest += " with incremental(s) " + ", ".join(f"#{r[0]} of {r[2]}" for r in incs)
            newest += "; "
        else:
            newest = "no backup of this CA is recorded; "
    return (f"recovery needs this record: restore from backup ({newest}run "
            f"certsrv restore --force FULL_SET_DIR [INCREMENTAL_SET_DIR ...] --home {home}, then certsrv serve)")
