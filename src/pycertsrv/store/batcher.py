"""Applying row images with as few ``executemany`` calls as their order allows, on either engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .logfile import Op


class Executor(Protocol):
    """A sqlite3 connection or a psycopg cursor: both run one statement over many parameter rows."""

    def executemany(self, sql: Any, params: Any, /) -> Any: ...


class RowBatcher:
    """Runs row operations as few ``executemany`` calls as their order allows.

    Tables are independent (no triggers, no foreign keys), so only the order of operations on the
    same table matters: each table has one queue of operations of one kind (put or delete), run when
    the table's next operation is of the other kind, and at :meth:`flush`. A batch of records thus
    costs about one ``executemany`` per table touched, however the records interleave tables.

    :param conn: where the statements run.
    :param statements: the engine's statement for each ``(table, "p" | "d")``.
    """

    def __init__(self, conn: Executor, statements: Mapping[tuple[str, str], str]) -> None:
        self.conn = conn
        self.statements = statements
        self.queues: dict[str, tuple[str, list[list[Any]]]] = {}

    def add(self, ops: list[Op]) -> None:
        """Queue one record's operations ``(table, "p" | "d", values)``."""
        queues = self.queues
        for tname, kind, values in ops:
            q = queues.get(tname)
            if q is None or q[0] != kind:
                if q is not None:
                    self.conn.executemany(self.statements[(tname, q[0])], q[1])
                q = queues[tname] = (kind, [])
            q[1].append(values)

    def flush(self) -> None:
        """Execute what is queued."""
        queues, self.queues = self.queues, {}
        for tname, (kind, params) in queues.items():
            self.conn.executemany(self.statements[(tname, kind)], params)
