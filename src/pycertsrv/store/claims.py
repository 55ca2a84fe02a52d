"""The backup claim (issue 14): one backup at a time per CA, across every node of a cluster.

A backup session claims the CA's one backup slot at Prepare, renews the claim while it runs and releases it
at the end. A claim not renewed within its ``ttl`` seconds has expired (its node died) and the next claim
takes it over. PostgreSQL keeps the claim in the database (:mod:`.postgres.claims`, timed by the server's
clock); a SQLite CA has one process, so its claim is local (:class:`LocalClaims`). Both refuse the same way.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from ..errors import ERROR_BUSY, Conflict, NotFound

SUBJECT = "backup"


def node_name() -> str:
    """``host:pid``: this node, as a backup claim and the writer lease name their holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


def busy_error(node: str, session_id: str, age_s: float, ttl_s: float) -> Conflict:
    """The refusal of a second backup while ``session_id`` on ``node`` holds the live claim."""
    left = max(ttl_s - age_s, 0.0)
    return Conflict(ERROR_BUSY, SUBJECT,
                    f"a backup of this CA is in progress on node {node} (session {session_id}, renewed "
                    f"{max(age_s, 0.0):.1f}s ago, expires {left:.0f}s after its last renewal); wait for it to end, "
                    "or end it on that node")


def gone_error(session_id: str) -> NotFound:
    """Renewing a claim that is no longer this session's (it expired and nobody holds it now)."""
    return NotFound(None, SUBJECT, f"the backup claim of session {session_id} expired (not renewed within its "
                                   "time); end this session and start the backup again")


@dataclass
class _Claim:
    session_id: str
    node: str
    ttl: float
    renewed: float  # time.monotonic()


class LocalClaims:
    """The backup claim of a one-process store (SQLite): held in memory (mixed into the SQLite ``Store``)."""

    _claim_guard = threading.Lock()  # guards the lazy creation of each store's own lock
    _claim_lock: threading.Lock
    _backup_claim: _Claim | None

    def _claims(self) -> threading.Lock:
        with LocalClaims._claim_guard:
            if "_claim_lock" not in self.__dict__:
                self._claim_lock = threading.Lock()
                self._backup_claim = None
        return self._claim_lock

    def claim_backup(self, session_id: str, node: str, ttl: float) -> None:
        """Claim the CA's one backup slot for ``session_id``; Conflict (ERROR_BUSY) while another live claim holds
        it (a claim not renewed within its ``ttl`` has expired and is taken over)."""
        with self._claims():
            now = time.monotonic()
            c = self._backup_claim
            if c is not None and c.session_id != session_id and now - c.renewed < c.ttl:
                raise busy_error(c.node, c.session_id, now - c.renewed, c.ttl)
            self._backup_claim = _Claim(session_id, node, float(ttl), now)

    def renew_backup_claim(self, session_id: str) -> None:
        """Renew ``session_id``'s claim (Conflict when another session took it over, NotFound when gone)."""
        with self._claims():
            now = time.monotonic()
            c = self._backup_claim
            if c is None:
                raise gone_error(session_id)
            if c.session_id != session_id:
                raise busy_error(c.node, c.session_id, now - c.renewed, c.ttl)
            c.renewed = now

    def release_backup_claim(self, session_id: str) -> None:
        """Give ``session_id``'s claim up (nothing when it holds none)."""
        with self._claims():
            c = self._backup_claim
            if c is not None and c.session_id == session_id:
                self._backup_claim = None
