"""Reads of the applied tables: get, select, count, max, the integrity check (one connection per thread)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ...errors import InvalidArgument
from .. import schema
from ..filters import order_clause, where_clause
from .dbfile import connect_reader
from .state import EngineState

# Serials asked about per statement: below SQLite's parameter limit (999 in builds before 3.32).
_SERIALS_CHUNK = 500


class Tables(EngineState):
    """The store's reads (a part of :class:`~pycertsrv.store.sqlite.engine.Store`)."""

    def _reader(self) -> sqlite3.Connection:
        # Reads go on in every state: SQLite holds only synced, applied records (see .health).
        self._check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_reader(self.db_path)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key ``key`` (scalar or tuple), or None."""
        t = schema.table(table)
        k = key if isinstance(key, tuple) else (key,)
        if self._degraded is not None:
            found, row = self._unapplied_row(table, k)
            if found:
                return row
        rows = self.select(table, [(c, "=", v) for c, v in zip(t.key, k)], limit=1)
        return rows[0] if rows else None

    def _where(self, table: str, where: Sequence[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
        return where_clause(schema.table(table), where, mark="?")

    def select(
        self,
        table: str,
        where: Sequence[tuple[str, str, Any]] = (),
        *,
        order_by: Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Rows matching every ``(column, op, value)`` filter.

        :param table: table name.
        :param where: filters; op is one of ``= != < <= > >= like``, ``is null``, ``is not null``.
        :param order_by: column names, ``-name`` for descending.
        :param limit: at most this many rows.
        :param offset: skip this many rows first.
        """
        t = schema.table(table)
        clause, params = self._where(table, where)
        sql = f"SELECT * FROM {table}{clause}" + order_clause(
            t, order_by, lambda col, desc, _text: f"{col} {'DESC' if desc else 'ASC'}")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        return [dict(r) for r in self._reader().execute(sql, params)]

    def count(self, table: str, where: Sequence[tuple[str, str, Any]] = ()) -> int:
        """Number of rows matching the filters."""
        clause, params = self._where(table, where)
        return int(self._reader().execute(f"SELECT COUNT(*) FROM {table}{clause}", params).fetchone()[0])

    def serials_in_use(self, serials: Sequence[str]) -> frozenset[str]:
        """Which of ``serials`` a request row holds (see :meth:`.interface.Engine.serials_in_use`)."""
        if not serials:
            return frozenset()
        # One statement text per batch size, kept in sqlite3's statement cache: no filter rendering, one step.
        conn = self._reader()
        found: set[str] = set()
        for i in range(0, len(serials), _SERIALS_CHUNK):
            part = serials[i:i + _SERIALS_CHUNK]
            sql = f"SELECT serial FROM request WHERE serial IN ({', '.join('?' * len(part))})"
            found.update(r[0] for r in conn.execute(sql, part).fetchall())
        return frozenset(found)

    def max_value(self, table: str, column: str) -> Any:
        """Largest value of a column (None for an empty table)."""
        t = schema.table(table)
        if column not in t.column_names:
            raise InvalidArgument(None, "store", f"{table} has no column {column}")
        return self._reader().execute(f"SELECT MAX({column}) FROM {table}").fetchone()[0]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when sound)."""
        return str(self._reader().execute("PRAGMA integrity_check").fetchone()[0])
