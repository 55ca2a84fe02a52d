"""Reads of the applied tables on PostgreSQL, with the SQLite engine's results (a part of ``PgStore``).

Each thread reads on a connection of its own (autocommit: every statement sees the latest commit, and a
record's row images commit together, so a read never sees half a record).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from ...errors import E_UNEXPECTED, CertSrvError, InvalidArgument
from .. import schema
from . import sql
from .connect import as_certsrv, connect, connection_lost

READ_RETRY_TTLS = 3.0  # issue 14: reads wait up to this many lease times for a writable server (a failover)


class PgReads:
    """Reads (mixed into :class:`.engine.PgStore`)."""

    url: str
    lease_ttl: float
    _local: threading.local
    _conns: list[Any]
    _conns_lock: threading.Lock
    _closed: bool

    def _check_open(self) -> None:
        if self._closed:
            raise CertSrvError(E_UNEXPECTED, "store", "the database is closed")

    def _reader(self) -> Any:
        self._check_open()
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self.url)
            self._local.conn = conn
            with self._conns_lock:  # closed ones (replaced after a lost server) are dropped
                self._conns[:] = [c for c in self._conns if not c.closed]
                self._conns.append(conn)
        return conn

    def _rows(self, query: str, params: Sequence[Any] = (), *, patient: bool = True) -> list[tuple[Any, ...]]:
        """One read; a lost connection is replaced and the read tried again (issue 14: after a PostgreSQL
        failover reads go on once a writable server answers, for up to three lease times; ``patient=False``:
        one attempt more at most, for a refusal that must not wait)."""
        deadline: float | None = None
        while True:
            try:
                return list(self._reader().execute(query, params).fetchall())
            except Exception as e:
                conn = getattr(self._local, "conn", None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()  # a broken connection is replaced at the next read
                    self._local.conn = None
                err = as_certsrv(self.url, e)
                if not connection_lost(e) and not connection_lost(err):
                    raise err from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + (READ_RETRY_TTLS * self.lease_ttl if patient else 0.0)
                    continue  # a connection that broke while idle: one fresh attempt at once
                if now >= deadline or self._closed:
                    raise err from None
                time.sleep(0.1)

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key ``key`` (scalar or tuple), or None."""
        t = schema.table(table)
        k = key if isinstance(key, tuple) else (key,)
        rows = self.select(table, [(c, "=", v) for c, v in zip(t.key, k)], limit=1)
        return rows[0] if rows else None

    def select(self, table: str, where: Sequence[tuple[str, str, Any]] = (), *, order_by: Sequence[str] = (),
               limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Rows matching every ``(column, op, value)`` filter (the SQLite engine's semantics)."""
        t = schema.table(table)
        clause, params = sql.where(t, where)
        q = f"SELECT {', '.join(t.column_names)} FROM {table}{clause}{sql.order(t, order_by)}"
        if limit is not None:
            q += " LIMIT %s OFFSET %s"
            params += [int(limit), int(offset)]
        return [dict(zip(t.column_names, r)) for r in self._rows(q, params)]

    def count(self, table: str, where: Sequence[tuple[str, str, Any]] = ()) -> int:
        """Number of rows matching the filters."""
        clause, params = sql.where(schema.table(table), where)
        return int(self._rows(f"SELECT count(*) FROM {table}{clause}", params)[0][0])

    def serials_in_use(self, serials: Sequence[str]) -> frozenset[str]:
        """Which of ``serials`` a request row holds (see :meth:`..interface.Engine.serials_in_use`)."""
        if not serials:
            return frozenset()
        return frozenset(r[0] for r in self._rows("SELECT serial FROM request WHERE serial = ANY(%s)",
                                                  [list(serials)]))

    def max_value(self, table: str, column: str) -> Any:
        """Largest value of a column (None for an empty table)."""
        if column not in schema.table(table).column_names:
            raise InvalidArgument(None, "store", f"{table} has no column {column}")
        return self._rows(f"SELECT max({column}) FROM {table}")[0][0]

