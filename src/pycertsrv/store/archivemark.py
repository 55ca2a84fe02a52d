"""The archive's marks kept IN the database (issue 13): lineage and watermark, as logged settings.

- ``archive_lineage``: a random id naming the history this database belongs to. Written at create
  (directly into the new database, so every snapshot holds it) and anew by every hard recovery
  (in its epilogue record, see :mod:`.sqlite.restore`): after a restore or a failover two histories
  never share an archive directory.
- ``archive_lineage_start``: the first generation of that lineage (1 at create, the fresh generation
  after a restore); generations below it belong to an earlier lineage.
- ``archive_watermark``: ``<lineage>:<generation>``, the last generation of that lineage shipped.
  Logged through the store's transaction, so it survives restarts and restores like any row.

The store uses :func:`keep_floor` so that, with archiving on, truncation and circular logging never
delete a generation not yet archived.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

SETTING_LINEAGE = "archive_lineage"
SETTING_LINEAGE_START = "archive_lineage_start"
SETTING_WATERMARK = "archive_watermark"


class _Reads(Protocol):
    def get(self, table: str, key: Any) -> dict[str, Any] | None: ...


def new_lineage() -> str:
    """A fresh lineage id (16 hex digits)."""
    return secrets.token_hex(8)


def initial_settings(lineage: str | None = None) -> list[tuple[str, str]]:
    """The ``setting`` rows of a new database: its lineage starts at generation 1 (issue 13: the lineage is in
    the database itself, so every snapshot of it carries it)."""
    return [(SETTING_LINEAGE, lineage or new_lineage()), (SETTING_LINEAGE_START, "1")]


@dataclass(frozen=True)
class Marks:
    """Lineage, its first generation, and the last generation shipped in it (``start - 1``: none)."""

    lineage: str | None
    start: int
    watermark: int


def _value(store: _Reads, name: str) -> str | None:
    row = store.get("setting", name)
    return None if row is None or row.get("value") is None else str(row["value"])


def read_marks(store: _Reads) -> Marks:
    """The marks as the database holds them (lineage None: none recorded yet)."""
    lineage = _value(store, SETTING_LINEAGE)
    start_text = _value(store, SETTING_LINEAGE_START)
    start = int(start_text) if start_text and start_text.isdigit() else 1
    wm = start - 1
    text = _value(store, SETTING_WATERMARK)
    if lineage is not None and text and ":" in text:
        wl, _, wg = text.partition(":")
        if wl == lineage and wg.isdigit():
            wm = max(wm, int(wg))
    return Marks(lineage, start, wm)


def keep_floor(store: _Reads, oldest: int) -> int:
    """The lowest generation archiving still needs on disk (deletion must stay below it).

    :param oldest: the oldest generation present (kept whole when no lineage is recorded yet).
    """
    m = read_marks(store)
    if m.lineage is None:
        return oldest
    return m.watermark + 1
