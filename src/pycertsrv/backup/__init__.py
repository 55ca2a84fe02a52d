"""The server side of backup and restore (spec §2.20, §3): sessions, file lists, manifests.

- :mod:`.session` — ``BackupManager``: one backup at a time, the state machine of spec §2.20.
- :mod:`.manifest` — ``certbkxp.dat``: the backup set's JSON manifest.
- :mod:`.writer` — ``run_backup``: a client writing a backup set to a directory.
- :mod:`.verify` — ``verify_backup``: checking a set (hashes, log continuity, identity).
- :mod:`.restore` — the restore side (owned by the restore helper).
"""

from __future__ import annotations

from .history import BackupRecord, backup_history
from .session import BackupManager
from .states import decode_backup_type

__all__ = ["BackupManager", "BackupRecord", "backup_history", "decode_backup_type"]
