"""Per-call notes of writes that are committed but not yet applied (see :mod:`pycertsrv.store.health`).

Kept apart from the store so that the client can note what a service answered without importing it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

# Per call (the service sets a fresh set for each request, the CLI one per command): LSNs of this
# caller's writes that are committed but not yet applied. Worker threads started with
# asyncio.to_thread share the set (they run in a copy of the context, which holds the same set).
COMMIT_NOTES: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar("pycertsrv_commit_notes",
                                                                              default=None)


@contextlib.contextmanager
def commit_scope() -> Iterator[set[int]]:
    """Collect the committed-not-applied LSNs of the writes made inside (one service request)."""
    notes: set[int] = set()
    token = COMMIT_NOTES.set(notes)
    try:
        yield notes
    finally:
        COMMIT_NOTES.reset(token)


def note_unapplied(lsn: int | None) -> None:
    """Record in the caller's scope that its write ``lsn`` is committed but not yet applied."""
    notes = COMMIT_NOTES.get()
    if notes is not None and lsn is not None:
        notes.add(lsn)


COMMITTED_NOT_APPLIED = "committed, not yet applied"


def commit_note(notes: set[int]) -> dict[str, Any] | None:
    """What an answer carries when its writes are committed but not applied (None when all are applied)."""
    if not notes:
        return None
    return {"state": COMMITTED_NOT_APPLIED, "lsns": sorted(notes),
            "message": "durable in the redo log (it survives a restart); the database applies it once it can "
                       "write again: until then lists may not show it, reading it by id works"}
