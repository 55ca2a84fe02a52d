"""The state one open SQLite store shares between its parts (commit log, checkpoint, snapshot, tables, faults).

Each part is a mixin of :class:`~pycertsrv.store.sqlite.engine.Store` over this state; the methods one part
calls on another are declared here, so each module type-checks on its own and none imports another's class.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...fsutil import HomeLock
from ...home import Home
from ..health import FAILED_SYNC
from ..logfile import Op
from ..options import StoreOptions
from ..report import RecoveryReport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..transaction import Transaction
    from .chkfile import Checkpoint


class EngineState:
    """Attributes of an open store (set here, owned by the part named in each comment)."""

    def __init__(self, home: Path, options: StoreOptions) -> None:
        self.home = Path(home).resolve()
        layout = Home(self.home)
        self.options = options
        self.db_dir = layout.db_dir
        self.log_dir = layout.log_dir
        self.system_dir = layout.system_dir
        self.checkpoint_path = layout.checkpoint
        self.lock = HomeLock(self.home, "store")
        self.db_path: Path = self.db_dir / "ca.db"
        self.name = ""
        self.identity = ""
        self.recovery = RecoveryReport()
        self._write_lock = threading.RLock()  # transaction bodies (commitlog)
        self._fd_lock = threading.Lock()  # the log descriptor and (_gen, _gen_first) (commitlog)
        self._apply_cond = threading.Condition()  # group commit stages, the writer connection
        self._local = threading.local()  # per-thread reader connections (tables)
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._db_fd = -1  # snapshot: the database file's descriptor, open until close
        self._fd = -1  # commitlog: the open generation
        self._gen = 0
        self._gen_first = 0
        self._gen_created = 0
        self._gen_size = 0
        self._next_lsn = 1
        self._appended_lsn = 0
        self._durable_lsn = 0
        self._applied_lsn = 0
        self._applying = False
        self._syncing = False
        self._waiters: list[tuple[int, threading.Lock]] = []
        self._pending: dict[int, list[Op]] = {}
        self._ids: dict[str, int] = {}
        self._cp: Checkpoint | None = None
        self._closed = True
        # faults (see .faults)
        self._failed: str | None = None  # a sync failed: writes stop until a restart (see ..health)
        self._failed_state = FAILED_SYNC
        self._degraded: str | None = None  # durable records wait to be applied (disk full): the state name
        self._degraded_detail = ""
        self._state_since: str | None = None
        self._retry_stop = threading.Event()
        self._retry_thread: threading.Thread | None = None
        self.log_damage: list[dict[str, Any]] = []

    if TYPE_CHECKING:
        # Provided by the parts; declared for the others.
        def _check_open(self) -> None: ...
        def _check_usable(self) -> None: ...
        def _check_writable(self) -> None: ...
        def _fail_locked(self, state: str, error: str) -> None: ...
        def _degrade_locked(self, first: int, last: int, error: BaseException | None) -> None: ...
        def _apply_locked(self) -> None: ...
        def _unapplied_row(self, table: str, key: tuple[Any, ...]) -> tuple[bool, dict[str, Any] | None]: ...
        def _database_fd(self) -> int: ...
        def _generation_of(self, lsn: int) -> int: ...
        def _reader(self) -> sqlite3.Connection: ...
        def _wait_applied_all(self) -> None: ...
        def transaction(self) -> Transaction: ...
        def get(self, table: str, key: Any) -> dict[str, Any] | None: ...
        def select(self, table: str, where: Sequence[tuple[str, str, Any]] = (), *, order_by: Sequence[str] = (),
                   limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]: ...
        def max_value(self, table: str, column: str) -> Any: ...
        def roll_log(self) -> int: ...
        def checkpoint(self) -> Checkpoint: ...
        def truncate_logs(self, below: int) -> list[int]: ...
