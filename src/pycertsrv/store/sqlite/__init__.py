"""The SQLite engine: everything that knows SQLite and the files of a home's database lives in this package.

- :mod:`.engine` — the :class:`Store` (create, open, close; the :class:`~pycertsrv.store.interface.Engine` calls);
- :mod:`.commitlog` — appends, group commit, roll, generations, truncation;
- :mod:`.checkpoint` — ``system/edb.chk``;
- :mod:`.snapshot` — the pinned or copied snapshot and the byte streams backup reads;
- :mod:`.tables` — reads of the applied tables;
- :mod:`.faults` — degraded and failed states;
- :mod:`.recovery` — soft recovery at open, hard recovery of a restored file;
- :mod:`.restore` — a registered restore, acted on at open, with its typed :class:`~.restore.RecoveryPlan`;
- :mod:`.setdb` — read-only facts of a database file no store has open (a backup set's copy);
- :mod:`.dbfile` — file naming, connections and PRAGMAs, ``-wal``/``-shm``/``-journal``, header bytes.
"""

from . import setdb
from .checkpoint import Checkpoint, read_checkpoint
from .dbfile import DATABASE_ERRORS, copy_database, db_file_name, engine_files
from .engine import Store, recovery_target
from .recovery import FileRecoveryTarget, hard_recover
from .restore import RecoveryPlan, RestoreOutcome, recover_registered
from .snapshot import SnapshotInfo

__all__ = [
    "DATABASE_ERRORS",
    "Checkpoint",
    "FileRecoveryTarget",
    "RecoveryPlan",
    "RestoreOutcome",
    "SnapshotInfo",
    "Store",
    "copy_database",
    "db_file_name",
    "engine_files",
    "hard_recover",
    "read_checkpoint",
    "recover_registered",
    "recovery_target",
    "setdb",
]
