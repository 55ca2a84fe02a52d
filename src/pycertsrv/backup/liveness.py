"""How a backup session ends without BackupEnd, and what the service shows of it (issue #10).

spec §2.20 [INF]: "if the client goes away without End, the server should abort and release the lock".
A session ends -- released exactly as by BackupEnd, a complete backup not recorded -- when

- it was idle longer than its limit (:meth:`SessionEnding.expire_idle`): ``idle_timeout`` once it reads
  files (a client reading is expected to keep calling), ``timeout`` (the ceiling) before;
- every connection that holds it is gone (:meth:`SessionEnding.hold`, :meth:`SessionEnding.end_if_gone`);
- an Operator aborts it (:meth:`SessionEnding.abort`);
- its cluster-wide backup claim (issue 14: one backup per CA across every node) was lost: not renewed in time
  (the database was unreachable that long) and taken by another node (:meth:`SessionEnding.renew_claim`). The
  claim is renewed every third of the session timeout, so a node that dies leaves a claim that expires.

The holder's next call then fails with 0x8000FFFF (spec §2.20: a call in state IDLE) naming why.
:class:`SessionEnding` is the part of :class:`pycertsrv.backup.session.BackupManager` that does this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import E_UNEXPECTED, CertSrvError, Conflict, NotFound, SequenceError

log = logging.getLogger("pycertsrv.backup")


class OpenFileView(Protocol):
    """What the status shows of a session's open file."""

    @property
    def name(self) -> str: ...

    @property
    def pos(self) -> int: ...

    @property
    def size(self) -> int: ...


class SessionView(Protocol):
    """The part of a backup session (``pycertsrv.backup.session._Session``) that ending it and its status use:
    a Protocol, so that this module does not import the session module that builds on it (no cycle)."""

    last_activity: float
    holders: list[object]

    @property
    def handle(self) -> str: ...

    @property
    def principal(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def phase(self) -> str: ...

    @property
    def started(self) -> datetime: ...

    @property
    def busy(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    @property
    def claim_id(self) -> str | None: ...

    @property
    def reading(self) -> bool: ...

    @property
    def bytes_sent(self) -> int: ...

    @property
    def db_listed(self) -> bool: ...

    @property
    def db_names(self) -> list[str]: ...

    @property
    def log_names(self) -> list[str] | None: ...

    @property
    def dynamic_names(self) -> list[str]: ...

    @property
    def done(self) -> set[str]: ...

    @property
    def open(self) -> OpenFileView | None: ...

    @property
    def lock(self) -> AbstractContextManager[Any]: ...


S = TypeVar("S", bound=SessionView)


class SessionEnding(Generic[S]):
    """Mixin of BackupManager: idle limits, holder connections, abort, status."""

    timeout: float
    idle_timeout: float
    last_ended: dict[str, Any] | None
    _ended: dict[str, str]
    _lock: threading.Lock
    _session: S | None
    _clock: Callable[[], float]
    _claim_renewed: float
    store: Any

    if TYPE_CHECKING:
        def _finish(self, s: S, *, aborted: bool) -> dict[str, Any]: ...

        def _use(self, handle: str, function: str,
                 principal: str | None = None) -> AbstractContextManager[S]: ...

    def _limit(self, s: S) -> float:
        """Idle seconds allowed: the short limit once files are read, else the ceiling (service config)."""
        return self.idle_timeout if s.reading else self.timeout

    def expire_idle(self) -> list[str]:
        """End every session idle for longer than its limit (:meth:`_limit`); returns the handles ended."""
        with self._lock:
            s = self._session
            if s is None or s.busy or not s.ready or self._clock() - s.last_activity <= self._limit(s):
                return []
        ended = self._end_now(s, f"idle for more than {self._limit(s):g}s")
        if ended is None:
            return []
        return [s.handle]

    def renew_claim(self) -> dict[str, Any] | None:
        """Renew the running session's cluster-wide backup claim when a third of its time has passed (issue 14).
        A claim another node took (this one expired: the database was unreachable longer than the session
        timeout) ends the session; an unreachable database is retried at the next call. Returns the ended
        session's status, if it ended."""
        with self._lock:
            s = self._session
            if s is None or s.ended or s.claim_id is None or self._clock() - self._claim_renewed < self.timeout / 3:
                return None
            cid = s.claim_id
        try:
            self.store.renew_backup_claim(cid)
        except (Conflict, NotFound) as e:
            return self._end_now(s, f"its cluster-wide backup claim was lost ({e.message})")
        except CertSrvError as e:
            log.warning("backup: cannot renew the cluster-wide backup claim (%s); retrying", e)
            return None
        self._claim_renewed = self._clock()
        return None

    def hold(self, handle: str, holder: object, principal_id: str | None = None) -> None:
        """Bind the session to a client connection: once every holder is gone (:meth:`end_if_gone`), it ends.

        :param handle: the session handle.
        :param holder: the connection (any object; compared by identity).
        :param principal_id: when given, the session must belong to this caller.
        """
        with self._use(handle, "BackupHold", principal_id) as s:
            if not any(h is holder for h in s.holders):
                s.holders.append(holder)

    def end_if_gone(self, gone: Callable[[object], bool]) -> dict[str, Any] | None:
        """End the session when it has holders and ``gone(h)`` is true for all (the client closed its
        connection, spec §2.20 [INF]); a call in flight finishes first. Returns the ended session's status.

        :param gone: tells whether a holder (connection) is closed.
        """
        with self._lock:
            s = self._session
            if s is None or s.busy or not s.ready or not s.holders or not all(gone(h) for h in s.holders):
                return None
        return self._end_now(s, "the client's connection closed")

    def abort(self, by: str) -> dict[str, Any]:
        """End the running session at once, whoever holds it (``certsrv backup --abort``): everything is
        released as by BackupEnd; a complete backup is not recorded. Returns its status before the end.

        :param by: who asked (named to the holder in its next call's error).
        """
        with self._lock:
            s = self._session
        ended = self._end_now(s, f"aborted by {by}") if s is not None else None
        if ended is None:
            raise SequenceError(E_UNEXPECTED, "BackupAbort", "no backup session is in progress; nothing to abort")
        return ended

    def _end_now(self, s: S, reason: str) -> dict[str, Any] | None:
        """End ``s`` (aborted) for ``reason``; None when it had already ended."""
        with s.lock:
            if s.ended:
                return None
            info = self._status(s)
            self._finish(s, aborted=True)
            with self._lock:
                self._ended[s.handle] = reason
                while len(self._ended) > 16:  # only the recent ones are worth naming
                    self._ended.pop(next(iter(self._ended)))
            info["ended"] = reason
            self.last_ended = info
            return info

    def touch(self, handle: str) -> None:
        """A range of ``handle``'s session is still being sent: the client is alive (progress resets idleness).

        :param handle: the session handle.
        """
        with self._lock:
            s = self._session
            if s is not None and s.handle == handle:
                s.last_activity = self._clock()

    def is_live(self, handle: str) -> bool:
        """Whether ``handle`` is the running session's (not ended)."""
        with self._lock:
            s = self._session
            return s is not None and s.handle == handle and not s.ended

    @property
    def active(self) -> bool:
        """A session exists (cheap: for the service's watcher)."""
        return self._session is not None

    def status(self) -> dict[str, Any] | None:
        """The running session (holder, since when, kind, phase, progress) or None; no handle is revealed."""
        with self._lock:
            s = self._session
            return None if s is None else self._status(s)

    def _status(self, s: S) -> dict[str, Any]:
        f = s.open
        listed = len(s.db_names if s.db_listed else []) + len(s.log_names or []) + len(s.dynamic_names)
        return {"principal": s.principal, "kind": s.kind, "phase": s.phase,
                "started": s.started.isoformat(), "idle_seconds": round(self._clock() - s.last_activity, 3),
                "idle_limit": self._limit(s), "held_by_connection": bool(s.holders),
                "files_done": len(s.done), "files_listed": listed, "bytes_sent": s.bytes_sent,
                "open_file": Path(f.name).name if f else None,
                "open_file_pos": f.pos if f else None, "open_file_size": f.size if f else None}

