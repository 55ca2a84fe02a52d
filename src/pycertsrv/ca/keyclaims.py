"""Request keys in the CA (issue 14): a retried submit never makes a second certificate.

A submit's request key (:mod:`pycertsrv.requestkey`) is stored as the request attribute ``RequestKey``; the
database holds it at most once (the partial unique index :data:`pycertsrv.store.schema.REQUEST_KEY_INDEX`, on both
engines). A submit whose key the database holds is answered with that request as it is now (same request id, same
certificate, same disposition) and writes nothing.

Who decides a race: the writer (:meth:`Authority.commit_prepared`), before anything is logged. Under
:class:`KeyClaims` a key is held by at most one commit in flight; a second commit with that key waits for the
first, then finds its row and answers with it. The unique index is the database's guarantee behind that rule,
not the way the race is decided: a constraint violation while the rows are applied would fail the whole
group-commit batch (PostgreSQL: the store stops writing until reopened), so it must never be reached in normal
work. One writer per database is what makes the writer's check sufficient (SQLite: the home lock; PostgreSQL:
the writer lease, and a fenced writer's commit is refused by the database).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ERROR_ALREADY_EXISTS, CertSrvError, Conflict
from ..requestkey import REQUEST_KEY
from ..store import CAStore
from .enroll import PreparedRequest
from .models import RequestInfo


def find_request(store: CAStore, key: str) -> dict[str, Any] | None:
    """The request row holding ``key``, or None (one indexed read of the ``attribute`` table)."""
    rows = store.select("attribute", [("name", "=", REQUEST_KEY), ("value", "=", key)], limit=1)
    if not rows:
        return None
    return store.get("request", int(rows[0]["request_id"]))


def mismatch(key: str, row: dict[str, Any], requester: str, raw_request: bytes | None) -> CertSrvError | None:
    """The refusal when ``row`` (holding ``key``) is not the same submission: another requester (who must not
    read it) or another request (a key is for retrying one submission, not for a new one); None when it is.

    :param raw_request: the new submission's request DER (None: not parsed yet, not compared).
    """
    rid = row["request_id"]
    if (row.get("requester") or "") != (requester or ""):
        return Conflict(ERROR_ALREADY_EXISTS, f"request key {key!r}",
                        f"another requester's request {rid} has this key; give another key, or none to have "
                        "one made")
    if raw_request is not None and bytes(row.get("raw_request") or b"") != bytes(raw_request):
        return Conflict(ERROR_ALREADY_EXISTS, f"request key {key!r}",
                        f"request {rid} was submitted with this key and another CSR; a key retries one "
                        "submission: give another key for a new request")
    return None


class KeyClaims:
    """Keys held by commits in flight on this writer: at most one commit per key at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, threading.Event] = {}

    def _try(self, key: str) -> threading.Event | None:
        with self._lock:
            ev = self._held.get(key)
            if ev is None:
                self._held[key] = threading.Event()
            return ev

    def claim(self, key: str) -> None:
        """Hold ``key``, first waiting for the commit that holds it (if any) to finish."""
        while (ev := self._try(key)) is not None:
            ev.wait()

    def release(self, key: str) -> None:
        """Let go of ``key`` (and wake whoever waits for it)."""
        with self._lock:
            ev = self._held.pop(key, None)
        if ev is not None:
            ev.set()

    @contextmanager
    def holding(self, keys: list[str]) -> Iterator[None]:
        """Hold every key of ``keys`` (claimed in sorted order, so two commits never wait for each other)."""
        got: list[str] = []
        try:
            for k in sorted(set(keys)):
                self.claim(k)
                got.append(k)
            yield
        finally:
            for k in got:
                self.release(k)


def key_answer(store: CAStore, key: str, requester: str, request_der: Callable[[], bytes]) -> RequestInfo | None:
    """The request holding ``key`` as it is now, for a submit by ``requester`` of the request ``request_der()``
    (decoded only when the key is found); None when no request holds it.

    :raises Conflict: another requester's request, or another CSR's, holds the key (:func:`mismatch`).
    """
    row = find_request(store, key)
    if row is None:
        return None
    refusal = mismatch(key, row, requester, request_der())
    if refusal is not None:
        raise refusal
    return RequestInfo.from_row(row)


Commit = Callable[[Sequence[PreparedRequest], Sequence[float] | None], list[RequestInfo | None]]


def commit_keyed(claims: KeyClaims, store: CAStore, items: Sequence[PreparedRequest], started: Sequence[float] | None,
                 commit: Commit) -> list[RequestInfo | CertSrvError | None]:
    """:meth:`Authority.commit_prepared` of items with request keys: every key is claimed, then looked up; only
    the items whose key no request holds (and the first of several with one key) are handed to ``commit``.

    :returns: per item, its request (written now, or the one holding its key), the refusal when the key is another
        requester's or another CSR's, or None when it must be prepared again (its serial, or the serial of the
        item holding its key, was taken).
    """
    keys = [p.attributes.get(REQUEST_KEY) for p in items]
    answers: list[RequestInfo | CertSrvError | None] = [None] * len(items)
    with claims.holding([k for k in keys if k]):
        rows: dict[str, dict[str, Any] | None] = {}  # key -> the row holding it (found, or written below)
        new: list[int] = []
        for i, k in enumerate(keys):
            if not k:
                new.append(i)
            elif k not in rows:
                rows[k] = find_request(store, k)
                if rows[k] is None:
                    new.append(i)
                    rows[k] = items[i].row  # holds request_id once written
        done = commit([items[i] for i in new], [started[i] for i in new] if started else None)
    for i, d in zip(new, done):
        answers[i] = d
    written = set(new)
    for i, (p, k) in enumerate(zip(items, keys)):
        if i in written or not k:
            continue
        row = rows.get(k)
        if row is None or "request_id" not in row:
            continue  # the item holding the key was not written (its serial was taken): prepare again
        answers[i] = mismatch(k, row, p.row.get("requester") or "", p.row.get("raw_request")) or \
            RequestInfo.from_row(row)
    return answers


__all__ = ["KeyClaims", "commit_keyed", "find_request", "key_answer", "mismatch"]
