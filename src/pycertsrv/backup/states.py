"""The backup session's state machine of spec §2.20, as rules: which kind a BackupPrepare asks for, the
phases a session moves through (``DB -> LOGS -> TRUNCATED``), and the one-file-at-a-time rule."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    InvalidArgument,
    SequenceError,
)
from ..spec import CSBACKUP_TYPE_FULL, CSBACKUP_TYPE_LOGS_ONLY, FULL, INCREMENTAL, JET_bitBackupIncremental

# spec §2.20: a prepared session's phase.
PHASE_DB = "DB"
PHASE_LOGS = "LOGS"
PHASE_TRUNCATED = "TRUNCATED"


class _HasOpenFile(Protocol):
    @property
    def open(self) -> _Named | None: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def decode_backup_type(grbit: int, flags: int) -> str:
    """The backup kind for BackupPrepare's ``grbitJet`` and ``dwBackupFlags`` (spec §2.2 [INF]).

    grbit 0 with flags 0 or 1 is a full backup (flags 0: the MS-CSRA example); flags 2
    (CSBACKUP_TYPE_LOGS_ONLY) or grbit 1 (JET_bitBackupIncremental) is incremental. grbit 1
    with flags 1 asks for both kinds at once and, like every other combination, is refused
    with E_INVALIDARG.

    :param grbit: the ``grbitJet`` argument.
    :param flags: the ``dwBackupFlags`` argument.
    """
    if grbit == 0 and flags in (0, CSBACKUP_TYPE_FULL):
        return FULL
    if (grbit == 0 and flags == CSBACKUP_TYPE_LOGS_ONLY) or (
        grbit == JET_bitBackupIncremental and flags in (0, CSBACKUP_TYPE_LOGS_ONLY)
    ):
        return INCREMENTAL
    raise InvalidArgument(E_INVALIDARG, "BackupPrepare",
                          f"grbitJet 0x{grbit & 0xFFFFFFFF:X} with dwBackupFlags 0x{flags & 0xFFFFFFFF:X} "
                          "is neither a full (0/1) nor a logs-only (2, or grbit 1) backup")


def no_open_file(s: _HasOpenFile, fn: str) -> None:
    """spec §2.20 / ESE-LogInfo: list and truncate calls need every file closed, else 0x8000FFFF."""
    if s.open is not None:
        raise SequenceError(E_UNEXPECTED, fn, f"{Path(s.open.name).name} is still open")
