"""Group commit at the CA layer: state changes prepared concurrently (each already validated and signed)
are written together in one ``store.transaction()`` — one redo-log record, one fsync, one SQLite commit.

Leader/follower, no background thread: a caller queues its write function; if no batch is being
written it becomes the leader and drains the whole queue into one transaction, otherwise it waits, so
changes queued while a batch was being made durable go out together in the next one. Every caller
returns only after its own rows are durable. A batch is atomic (one log record), so each change in it is
too. Write functions only ``put``/``delete`` and allocate ids; they never fail on input (all checks happen
before queueing), so a failed batch means the store failed, and every caller in it gets that error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..store import Store, Transaction

T = TypeVar("T")
MAX_BATCH = 256  # bounds one log record's size (each issuance is ~3 KiB of row images)


class _Item(Generic[T]):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[Transaction], T]) -> None:
        self.fn = fn
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Batches concurrent write functions into shared transactions of ``store``.

    :param store: the open store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[_Item[Any]] = []
        self._cond = threading.Condition()
        self._leading = False
        self.batches = 0
        self.items = 0

    def run(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn(tx)`` inside a transaction shared with concurrent callers; return its result once durable.

        :param fn: puts the rows of one state change (and may allocate ids with ``tx.next_id``).
        """
        item: _Item[T] = _Item(fn)
        with self._cond:
            self._queue.append(item)
            while not item.done:
                if self._leading:
                    self._cond.wait()  # a batch is being made durable; ours may be in it or in the next
                    continue
                self._leading = True
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

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
            it.done = True
        self.batches += 1
        self.items += len(batch)
