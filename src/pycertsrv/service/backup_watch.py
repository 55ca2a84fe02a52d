"""Ending backup sessions whose client is gone (spec §2.20 [INF]: "if the client goes away without End, the
server should abort and release the lock").

:func:`watch_sessions` runs in the service every :data:`WATCH_INTERVAL` seconds and ends the session

- as soon as every connection that holds it (``X-Backup-Hold: connection``) is closed: the client exited or
  was killed;
- when it was idle longer than its limit (``BackupManager.expire_idle``: ``service.backup_idle_timeout`` once
  files are read, ``service.backup_session_timeout`` before);
- when its cluster-wide backup claim was lost (issue 14); while it lives, the claim is renewed from here.

"Idle" counts the client's reading too: a BackupRead answer is large (up to 64 MiB) and a paced client
(``--max-rate``) drains it over many seconds without making a call. So each connection that received a
BackupRead answer is watched: while the bytes queued on its socket (``SIOCOUTQ``) go down, or pieces of an
answer are still being accepted, the client is reading and the session is touched. A client that stops
draining (hung, SIGSTOP) is idle; once its session has ended, a stalled answer's connection is closed so
it releases its descriptor and any pinned snapshot.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..backup.session import BackupManager
from ..errors import CertSrvError

log = logging.getLogger("pycertsrv.service")
READS = "backup_reads"  # app key: transport -> _Reading, connections that received BackupRead answers
WATCH_INTERVAL = 0.25  # seconds between checks


@dataclass
class _Reading:
    """A connection that received BackupRead answers for the session ``handle``."""

    handle: str
    mgr: BackupManager
    last_progress: float
    queued: int = 0  # bytes on its socket not yet read by the client, at the last check
    sending: int = 0  # answers being sent now
    task: asyncio.Task[Any] | None = None  # the request task sending the latest answer

    def progress(self) -> None:
        """A piece of an answer was accepted by the kernel: the client is draining."""
        self.last_progress = asyncio.get_running_loop().time()
        self.mgr.touch(self.handle)

    def done(self) -> None:
        """An answer was sent (or failed)."""
        self.sending -= 1


def reading(request: web.Request, mgr: BackupManager, handle: str) -> _Reading:
    """Register the request's connection as receiving a BackupRead answer of ``handle`` (call ``done()``)."""
    now = asyncio.get_running_loop().time()
    reads: dict[object, _Reading] = request.app[READS]
    key: object = request.transport if request.transport is not None else object()
    r = reads.get(key)
    if r is None or r.handle != handle:
        r = reads[key] = _Reading(handle, mgr, now)
    r.sending += 1
    r.task = asyncio.current_task()
    return r


def _queued(transport: Any) -> int | None:
    """Bytes written to the connection's socket that the peer has not read yet (Linux SIOCOUTQ)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # TIOCOUTQ == SIOCOUTQ on Linux
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


def _gone(transport: object) -> bool:
    """A holder connection is gone once its transport is closing (peer closed, reset, or we closed it)."""
    return bool(getattr(transport, "is_closing", lambda: True)())


def _check_reads(app: web.Application, mgr: BackupManager) -> None:
    now = asyncio.get_running_loop().time()
    reads: dict[object, _Reading] = app[READS]
    for transport, r in list(reads.items()):
        if _gone(transport):
            del reads[transport]
            continue
        live = mgr.is_live(r.handle)
        q = _queued(transport)
        if q is not None:
            if q < r.queued:  # the client read some of what we sent
                r.last_progress = now
                if live:
                    mgr.touch(r.handle)
            r.queued = q
        if not live:
            if not r.sending:
                del reads[transport]
            elif now - r.last_progress > mgr.idle_timeout:
                log.info("backup: closing a stalled BackupRead answer of an ended session (no progress for %gs)",
                         mgr.idle_timeout)
                # Cancel the sending task (not transport.abort(): closing the socket under a pending
                # loop.sendfile leaves asyncio's sendfile waiter in a bad state); aiohttp then closes it.
                if r.task is not None:
                    r.task.cancel()
                del reads[transport]


def _sweep(mgr: BackupManager) -> dict[str, Any] | None:
    ended = mgr.renew_claim()  # issue 14: the cluster-wide claim lives while this node does
    if ended is not None:
        return ended
    ended = mgr.end_if_gone(_gone)
    if ended is None and mgr.expire_idle():
        ended = mgr.last_ended
    return ended


async def watch_sessions(app: web.Application) -> None:
    """End backup sessions whose client is gone (every holder connection closed) or idle too long."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        mgr = app.get("backup")
        if not isinstance(mgr, BackupManager):
            continue
        _check_reads(app, mgr)
        if not mgr.active:
            continue
        try:
            # In a worker thread: ending unpins the snapshot and removes staging files (disk I/O).
            ended = await asyncio.to_thread(_sweep, mgr)
        except CertSrvError as e:
            log.warning("backup session watch: %s", e)
            continue
        if ended is not None:
            log.info("backup session of %s (%s, started %s) ended: %s; pins and staging released",
                     ended["principal"], ended["kind"], ended["started"], ended["ended"])
