"""The CA database engine (redo log, checkpoint, SQLite tables, soft and hard recovery).

See :mod:`pycertsrv.store.engine` for the interface; nothing above this package writes SQL.
"""

from .engine import (
    Checkpoint,
    GenerationInfo,
    SnapshotInfo,
    Store,
    StoreOptions,
    Transaction,
    copy_database,
    db_file_name,
    hard_recover,
    read_checkpoint,
)
from .logfile import list_generations, log_name, parse_log_name
from .replay import RecoveryReport
from .schema import DISP_DENIED, DISP_ERROR, DISP_ISSUED, DISP_PENDING, DISP_REVOKED, TABLES

__all__ = [
    "DISP_DENIED",
    "DISP_ERROR",
    "DISP_ISSUED",
    "DISP_PENDING",
    "DISP_REVOKED",
    "TABLES",
    "Checkpoint",
    "GenerationInfo",
    "RecoveryReport",
    "SnapshotInfo",
    "Store",
    "StoreOptions",
    "Transaction",
    "copy_database",
    "db_file_name",
    "hard_recover",
    "list_generations",
    "log_name",
    "parse_log_name",
    "read_checkpoint",
]
