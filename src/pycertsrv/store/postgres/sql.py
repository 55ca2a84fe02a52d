"""SQL for the materialised tables on PostgreSQL, built once per table (the engine's apply path)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..batcher import RowBatcher
from ..filters import order_clause, where_clause
from ..logfile import Op
from ..schema import TABLES, Table


def upsert_sql(t: Table) -> str:
    """INSERT ... ON CONFLICT DO UPDATE of a whole row image (SQLite's INSERT OR REPLACE)."""
    names = ", ".join(t.column_names)
    marks = ", ".join("%s" for _ in t.columns)
    rest = [c for c in t.column_names if c not in t.key]
    action = ("DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)) if rest else "DO NOTHING"
    return f"INSERT INTO {t.name} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(t.key)}) {action}"


def delete_sql(t: Table) -> str:
    """DELETE of one row by primary key."""
    return f"DELETE FROM {t.name} WHERE " + " AND ".join(f"{k} = %s" for k in t.key)


INSERT_LOG = "INSERT INTO log_record (lsn, gen, ts_us, crc, payload) VALUES (%s, %s, %s, %s, %s)"
"""One log row (the writer's commit and a restore's replay write the log with it)."""

SQL: dict[tuple[str, str], str] = {}
for _t in TABLES.values():
    SQL[(_t.name, "p")] = upsert_sql(_t)
    SQL[(_t.name, "d")] = delete_sql(_t)


def apply_batch(cur: Any, batch: Sequence[list[Op]]) -> None:
    """Apply records' operations in order, as few ``executemany`` calls as the order allows.

    Tables are independent (no triggers or foreign keys), so only the order within a table matters
    (:class:`..batcher.RowBatcher`, with PostgreSQL's statements). Within one ``executemany`` of upserts a key must
    not repeat (PostgreSQL refuses to touch a row twice in one INSERT ... ON CONFLICT only within one
    statement; executemany runs one statement per row, so repeats are fine).
    """
    b = RowBatcher(cur, SQL)
    for ops in batch:
        b.add(ops)
    b.flush()


def where(t: Table, filters: Sequence[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause with SQLite's semantics (LIKE is case-insensitive there: ILIKE here)."""
    return where_clause(t, filters, mark="%s", spell={"like": "ILIKE", "!=": "<>"})


def order(t: Table, order_by: Sequence[str]) -> str:
    """ORDER BY with SQLite's results: bytewise text order, NULLs lowest."""
    def term(col: str, desc: bool, text: bool) -> str:
        coll = ' COLLATE "C"' if text else ""
        return f"{col}{coll} {'DESC NULLS LAST' if desc else 'ASC NULLS FIRST'}"

    return order_clause(t, order_by, term)
