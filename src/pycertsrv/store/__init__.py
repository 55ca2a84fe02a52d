"""The CA database: the redo log and the tables it materialises, behind one engine interface.

The contract is :mod:`pycertsrv.store.interface`; the SQLite engine is :mod:`pycertsrv.store.sqlite`; the
engine-neutral parts are here (log file format :mod:`.logfile`, schema, replay, registration, health).
Nothing above this package writes SQL or names an engine file.
"""

from .facade import CAStore, create_store, engine_facts, open_store
from .interface import ByteStream, Commit, Engine, Generation, GenerationStream, RecoveryTarget, SnapshotStream, Until
from .logfile import list_generations, log_name, parse_log_name
from .options import StoreOptions
from .report import RecoveryReport
from .schema import DISP_DENIED, DISP_ERROR, DISP_ISSUED, DISP_PENDING, DISP_REVOKED, TABLES
from .sqlite import (
    DATABASE_ERRORS,
    Checkpoint,
    SnapshotInfo,
    Store,
    copy_database,
    db_file_name,
    engine_files,
    hard_recover,
    read_checkpoint,
    recovery_target,
    setdb,
)
from .transaction import Transaction

GenerationInfo = Generation  # the name before the engine interface

__all__ = [
    "DATABASE_ERRORS",
    "DISP_DENIED",
    "DISP_ERROR",
    "DISP_ISSUED",
    "DISP_PENDING",
    "DISP_REVOKED",
    "TABLES",
    "ByteStream",
    "CAStore",
    "Checkpoint",
    "Commit",
    "Engine",
    "Generation",
    "GenerationInfo",
    "GenerationStream",
    "RecoveryReport",
    "RecoveryTarget",
    "SnapshotInfo",
    "SnapshotStream",
    "Store",
    "StoreOptions",
    "Transaction",
    "Until",
    "copy_database",
    "create_store",
    "db_file_name",
    "engine_facts",
    "engine_files",
    "hard_recover",
    "list_generations",
    "log_name",
    "open_store",
    "parse_log_name",
    "read_checkpoint",
    "recovery_target",
    "setdb",
]
