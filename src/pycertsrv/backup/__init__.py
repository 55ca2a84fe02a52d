"""The server side of backup and restore (spec §2.20, §3): the CA's backup sessions and its restore registration.

- :mod:`.session` -- ``BackupManager``: one backup at a time, the state machine of spec §2.20, the snapshot.
- :mod:`.states` -- the phases and the backup kind a BackupPrepare asks for.
- :mod:`.listed` -- the file-name rule of BackupOpenFile.
- :mod:`.liveness` -- how a session ends without BackupEnd (idle, client gone, abort) and its status.
- :mod:`.history` -- ``backup_history``: recorded backups, and whether an incremental may start.
- :mod:`.local` -- ``LocalSession``: a session driven in process.
- :mod:`.restore` -- the certbcli restore functions on a local, stopped home (registration, spec §2.12-2.17).

The backup set on disk (manifest, writer, verify, the planned restore) is :mod:`pycertsrv.backupset`, a client
of these sessions through :mod:`pycertsrv.client`; nothing here imports it.
"""

from __future__ import annotations

from .history import BackupRecord, backup_history
from .session import BackupManager
from .states import decode_backup_type

__all__ = ["BackupManager", "BackupRecord", "backup_history", "decode_backup_type"]
