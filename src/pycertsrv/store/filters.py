"""Read filters of the engine interface (``Where`` in :mod:`.interface`), checked and rendered once for every engine.

A filter is ``(column, op, value)``; the column must be the table's and the op one of :data:`OPS`. Each
engine renders it in its own dialect: the placeholder, and how it spells SQLite's case-insensitive LIKE
and ``!=`` — so a filter means the same thing whatever the engine (issue 12: equal results on both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgument
from .schema import Table

OPS = {"=", "!=", "<", "<=", ">", ">=", "is null", "is not null", "like"}


def where_clause(t: Table, filters: Sequence[tuple[str, str, Any]], *, mark: str,
                 spell: dict[str, str] | None = None) -> tuple[str, list[Any]]:
    """``(" WHERE ...", params)``, or ``("", [])`` without filters; InvalidArgument for an unknown column or op.

    :param mark: the dialect's parameter placeholder (``?`` or ``%s``).
    :param spell: how the dialect writes an op, where it differs from the op's upper-case form.
    """
    spell = spell or {}
    parts: list[str] = []
    params: list[Any] = []
    for col, op, val in filters:
        if col not in t.column_set or op not in OPS:
            raise InvalidArgument(None, "store", f"bad filter {col} {op}")
        if op in ("is null", "is not null"):
            parts.append(f"{col} {op.upper()}")
        else:
            parts.append(f"{col} {spell.get(op, op.upper())} {mark}")
            params.append(val)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def order_clause(t: Table, order_by: Sequence[str], term: Callable[[str, bool, bool], str]) -> str:
    """``" ORDER BY ..."`` (or ``""``) for ``order_by`` (``col`` or ``-col`` for descending); InvalidArgument for
    an unknown column. ``term(column, descending, is_text)`` writes one term in the engine's dialect."""
    out = []
    for o in order_by:
        desc = o.startswith("-")
        col = o.lstrip("-")
        if col not in t.column_set:
            raise InvalidArgument(None, "store", f"cannot order by {col}")
        out.append(term(col, desc, t.columns[t.column_names.index(col)].type == "TEXT"))
    return (" ORDER BY " + ", ".join(out)) if out else ""
