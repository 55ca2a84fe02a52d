"""The facade's transaction: row images collected in a ``with`` block, committed as one log record."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import InvalidArgument
from . import health as health_mod
from . import schema
from .logfile import Op


class TransactionHost(Protocol):
    """What a :class:`Transaction` needs from the store that made it."""

    _write_lock: threading.RLock

    def _log_locked(self, tx: Transaction) -> int: ...
    def _commit_wait(self, lsn: int) -> bool: ...
    def _wait_applied_all(self) -> None: ...
    def _next_id(self, table: str) -> int: ...
    def get(self, table: str, key: Any) -> dict[str, Any] | None: ...
    def select(self, table: str, where: Sequence[tuple[str, str, Any]] = (), *, order_by: Sequence[str] = (),
               limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]: ...


class Transaction:
    """Row images collected inside ``with store.transaction() as tx``; written when the block exits.

    Entering takes the store's write lock (bodies are serialised); a clean exit appends one log
    record under it, then waits outside it until the record is durable and applied. A block that
    raises writes nothing.
    """

    def __init__(self, store: TransactionHost) -> None:
        self._store = store
        self.ops: list[Op] = []
        self.lsn: int | None = None
        self.applied = True  # False: committed (durable in the log) but not yet applied to SQLite

    def __enter__(self) -> Transaction:
        self._store._write_lock.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        store = self._store
        try:
            if exc_type is not None or not self.ops:
                return
            lsn = store._log_locked(self)
        finally:
            store._write_lock.release()
        self.applied = store._commit_wait(lsn)
        if not self.applied:
            health_mod.note_unapplied(lsn)

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Store the whole resulting row (missing columns are NULL)."""
        self.ops.append((table, "p", schema.row_to_image(schema.table(table), row)))

    def delete(self, table: str, key: Any) -> None:
        """Delete a row by primary key (a scalar or a tuple)."""
        t = schema.table(table)
        k = key if isinstance(key, tuple) else (key,)
        if len(k) != len(t.key):
            raise InvalidArgument(None, "store", f"key for {table} needs {len(t.key)} values")
        self.ops.append((table, "d", list(k)))

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """Read a row as this transaction sees it (its own writes, then committed state)."""
        k = key if isinstance(key, tuple) else (key,)
        t = schema.table(table)
        # Its own last write of that row, if any: searched here rather than indexed at every put (issue 15:
        # a put is on every issuance's path, a read inside a transaction is rare).
        for tname, kind, values in reversed(self.ops):
            if tname != table:
                continue
            if kind == "d" and tuple(values) == k:
                return None
            if kind == "p" and tuple([values[i] for i in t.key_positions]) == k:
                return dict(zip(t.column_names, values))
        self._store._wait_applied_all()
        return self._store.get(table, k)

    def select(self, table: str, where: Sequence[tuple[str, str, Any]] = (), **kw: Any) -> list[dict[str, Any]]:
        """``Store.select`` over committed state, after every earlier commit is applied."""
        self._store._wait_applied_all()
        return self._store.select(table, where, **kw)

    def next_id(self, table: str) -> int:
        """Allocate the next integer key of a single-key table (never reused in this process)."""
        return self._store._next_id(table)
