"""Group commit at the CA layer: state changes prepared concurrently (each already validated and signed)
are written together in one ``store.transaction()`` — one redo-log record, one fsync, one SQLite commit.

Leader/follower, no background thread: a caller queues its write function; if no batch is being
written it becomes the leader and drains the queue into one transaction, otherwise it sleeps on its own
gate, so changes queued while a batch was being made durable go out together in the next one. The leader
opens the gates of exactly the callers in its batch, then hands leadership to the oldest queued caller
(one wake-up per caller and one per batch: no thundering herd of waiters re-checking a shared
condition, each of which would have to take the GIL back). Every caller returns only after its own rows
are durable. A batch is atomic (one log record), so each change in it is too. Write functions only
``put``/``delete`` and allocate ids; they never fail on input (all checks happen before queueing), so a
failed batch means the store failed, and every caller in it gets that error.

A batch that is durable in the redo log but could not be applied to SQLite (disk full: the store is
degraded, see :mod:`pycertsrv.store.health`) is committed: every caller in it returns its result, and is
noted in its own request's scope as "committed, not yet applied" (the leader's thread is not theirs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..store import CAStore, Transaction
from ..store.health import note_unapplied
from .observe import CAObserver

T = TypeVar("T")
MAX_BATCH = 256  # bounds one log record's size (each issuance is ~3 KiB of row images)


class _Item(Generic[T]):
    __slots__ = ("done", "error", "fn", "gate", "lsn", "result", "weight")

    def __init__(self, fn: Callable[[Transaction], T], weight: int = 1) -> None:
        self.fn = fn
        self.weight = weight  # state changes it writes (the service's batch committer hands over several)
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.lsn: int | None = None  # set when committed but not yet applied
        self.gate = threading.Lock()
        self.gate.acquire()  # released by a leader: when the item is written, or to make its caller lead


class GroupCommitter:
    """Batches concurrent write functions into shared transactions of ``store``.

    :param store: the open store.
    """

    def __init__(self, store: CAStore) -> None:
        self.store = store
        self._queue: list[_Item[Any]] = []
        self._lock = threading.Lock()
        self._leading = False
        self.batches = 0
        self.items = 0
        self.observer: CAObserver | None = None  # told each batch's size (the service's metrics)

    def run(self, fn: Callable[[Transaction], T], changes: int = 1) -> T:
        """Run ``fn(tx)`` inside a transaction shared with concurrent callers; return its result once durable.

        :param fn: puts the rows of one state change (and may allocate ids with ``tx.next_id``).
        :param changes: how many state changes ``fn`` writes (counted in the batch size the observer sees).
        """
        item: _Item[T] = _Item(fn, changes)
        with self._lock:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item.gate.acquire()  # sleeps until written, or until handed the lead (item still queued, first)
        if not item.done:
            self._lead()
        if item.error is not None:
            raise item.error
        if item.lsn is not None:
            note_unapplied(item.lsn)  # in this caller's context: its answer says so
        return item.result  # type: ignore[return-value]

    def _lead(self) -> None:
        # The leader's own item is first in the queue (handed the lead) or alone in it (queue was idle).
        with self._lock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            self._write(batch)
        finally:
            with self._lock:
                nxt = self._queue[0] if self._queue else None
                self._leading = nxt is not None
            for it in batch:
                if not it.done:  # only when _write itself was interrupted: report it, never hang
                    it.error = RuntimeError("group commit interrupted")
                    it.done = True
                it.gate.release()  # the leader's own gate too: it was never waited on, so this is harmless
            if nxt is not None:
                nxt.gate.release()  # next leader: its item is not done, so it leads the queued batch

    def _write(self, batch: list[_Item[Any]]) -> None:
        results: list[Any] = []
        try:
            with self.store.transaction() as tx:
                for it in batch:
                    results.append(it.fn(tx))
        except BaseException as e:
            for it in batch:
                it.error = e
                it.done = True
            return
        for it, r in zip(batch, results):
            it.result = r
            it.lsn = None if tx.applied else tx.lsn
            it.done = True
        changes = sum(it.weight for it in batch)
        self.batches += 1
        self.items += changes
        if self.observer is not None:
            self.observer.batch_committed(changes)
