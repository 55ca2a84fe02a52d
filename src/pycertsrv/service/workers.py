"""Issuance on every core (issue 15): worker processes prepare new requests, the service's own process
writes them.

The process model and the IPC were chosen by measurement (EC P-256 CA and requests, this 2-core machine):
per issuance, parsing and verifying the request costs ~115 us of CPU, building and signing the
certificate ~120 us, the HTTP request through aiohttp and the middleware ~125 us, the store ~65 us per
item in a group commit of 32 (~330 us when every item commits alone), pickling the prepared request
(1.4 KB) both ways over a socketpair ~10 us. The crypto is half of the work and is pure, so it moves to
worker processes; HTTP, roles (SO_PEERCRED / TLS client certificate), the audit log and the store stay in
one process, so every rule that depends on them is exactly what it was with one process:

- a worker gets the request bytes, the caller's identity and roles, and returns a
  :class:`~pycertsrv.ca.enroll.PreparedRequest` (or the refusal): it parses, checks the policy and the
  caller's rights and signs; it holds no store, no home lock and writes nothing;
- :class:`BatchCommitter` hands every prepared request that arrived while the previous batch was being made
  durable to :meth:`Authority.commit_prepared` at once: one redo-log record, one fsync (request ids,
  serial uniqueness and log order are decided there, by the one writer);
- a worker that dies (SIGKILL, OOM) loses nothing but CPU: the requests it held are prepared again by
  another worker and the pool starts a new one.

A worker is ``python -m pycertsrv.ca.worker FD`` (no HTTP stack in it); frames on each socketpair are
:data:`pycertsrv.ca.worker.FRAME`-prefixed pickles (both ends are this program: the socketpair is inherited,
nobody else can write to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..ca.enroll import SERIAL_TRIES, no_unused_serial
from ..ca.worker import FRAME as _LEN
from ..commitnote import commit_scope, note_unapplied
from ..errors import E_UNEXPECTED, CertSrvError, Unavailable
from ..errors import RPC_S_SERVER_UNAVAILABLE as E_UNAVAILABLE

log = logging.getLogger("pycertsrv.service")
TRIES = 3  # a request whose worker died is prepared again on another worker, this many times in all
QUEUE = 2  # requests a worker holds before the next worker is given one


def default_workers() -> int:
    """The number of cores, at least two (so one worker's crash never stops issuance)."""
    return max(2, os.cpu_count() or 1)


class WorkerLost(Exception):
    """The worker holding a request died before answering (the request is prepared again elsewhere)."""


class _Channel(asyncio.Protocol):
    """The service's end of one worker's socketpair: frames are decoded as they arrive, in the loop's own
    callback (no task and no await per answer)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= _LEN.size:
            n = _LEN.unpack_from(buf)[0]
            if len(buf) < _LEN.size + n:
                return
            with memoryview(buf) as view:
                msg = pickle.loads(view[_LEN.size:_LEN.size + n])
            del buf[:_LEN.size + n]
            if msg[0] == "ready":
                if not self.ready.done():
                    self.ready.set_result(msg)
                continue
            fut = self.pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(WorkerLost())
        self.pending.clear()
        if not self.ready.done():
            self.ready.set_exception(WorkerLost())
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(data)) + data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    channel: _Channel
    alive: bool = True
    task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pending(self) -> dict[int, asyncio.Future[Any]]:
        return self.channel.pending


def _material_message(authority: Any) -> tuple[Any, ...]:
    key_der = authority.signing_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption())
    cert = authority.certificate if authority.has_certificate else None
    cert_der = cert.public_bytes(serialization.Encoding.DER) if cert is not None else None
    return ("material", authority.config, key_der, cert_der, str(authority.request_path))


class WorkerPool:
    """``n`` worker processes preparing requests for ``authority`` (see the module docstring).

    :param authority: the open Authority (its key and certificate are handed to each worker).
    :param n: how many workers.
    """

    def __init__(self, authority: Any, n: int) -> None:
        self.authority = authority
        self.n = n
        self.workers: list[_Worker] = []
        self._seq = itertools.count(1)
        self._cert: Any = None
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()
        self.restarts = 0

    def in_flight(self) -> int:
        """Requests the workers hold now."""
        return sum(len(w.pending) for w in self.workers)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.pid for w in self.workers if w.alive]

    def status(self) -> dict[str, Any]:
        """For ``GET /status``: each live worker's pid and how many requests it holds, and the restarts."""
        live = [w for w in self.workers if w.alive]
        return {"pids": [w.pid for w in live], "busy": [len(w.pending) for w in live], "restarts": self.restarts}

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the CA's material."""
        self._cert = self.authority.certificate if self.authority.has_certificate else None
        self.workers = list(await asyncio.gather(*(self._spawn() for _ in range(self.n))))

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            # pycertsrv.ca.worker imports no HTTP stack: a worker holds only what signing needs.
            proc = subprocess.Popen([sys.executable, "-m", "pycertsrv.ca.worker", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        _, channel = await asyncio.get_running_loop().connect_accepted_socket(_Channel, ours)
        w = _Worker(proc, channel)
        channel.send(_material_message(self.authority))
        try:
            await asyncio.wait_for(asyncio.shield(channel.ready), 120)
        except (WorkerLost, TimeoutError) as e:
            proc.kill()
            channel.close()
            await asyncio.to_thread(proc.wait)
            raise Unavailable(E_UNAVAILABLE, "service", f"a worker process did not start ({type(e).__name__}); "
                              "see the service log") from None
        w.task = asyncio.create_task(self._watch(w))
        return w

    async def _watch(self, w: _Worker) -> None:
        """When a worker's channel closes: what it held was failed (and is prepared again); start another."""
        await w.channel.lost
        w.alive = False
        w.channel.close()
        rc = await asyncio.to_thread(w.proc.wait)
        if self._closing:
            return
        log.warning("worker process %d ended (exit status %s) with requests in hand; they are prepared again "
                    "by another worker, and a new worker starts", w.pid, rc)
        task = asyncio.create_task(self._replace(w))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _replace(self, dead: _Worker) -> None:
        try:
            new = await self._spawn()
        except CertSrvError as e:
            log.error("cannot start a replacement worker: %s", e)
            return
        self.restarts += 1
        if self._closing:
            new.channel.close()
            return
        self.workers = [new if w is dead else w for w in self.workers]

    async def _refresh(self) -> None:
        """A subordinate CA installed its certificate: every worker gets the new material."""
        cert = self.authority.certificate if self.authority.has_certificate else None
        if cert is self._cert:
            return
        self._cert = cert
        msg = _material_message(self.authority)
        for w in self.workers:
            if w.alive:  # the worker answers ("ready", 0, pid) again: ignored
                w.channel.send(msg)

    async def prepare(self, csr: bytes, *, requester: str, template: str | None,
                      attributes: Mapping[str, str] | None, roles: frozenset[str]) -> Any:
        """A :class:`~pycertsrv.ca.enroll.PreparedRequest` from the least busy worker (the refusal raised)."""
        await self._refresh()
        for _ in range(TRIES):
            live = [w for w in self.workers if w.alive and not w.channel.lost.done()]
            if not live:
                break
            w = self._pick(live)
            seq = next(self._seq)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            w.pending[seq] = fut
            try:
                w.channel.send(("prep", seq, csr, requester, template, dict(attributes) if attributes else None,
                                roles))
                msg = await fut
            except (WorkerLost, ConnectionError):
                continue
            finally:
                w.pending.pop(seq, None)
            if msg[0] == "ok":
                return msg[2]
            if msg[0] == "err":
                raise msg[2]
            log.error("worker %d failed on a request: %s", w.pid, msg[2])
            raise CertSrvError(E_UNEXPECTED, "submit", "internal error (see the service log)")
        raise Unavailable(E_UNAVAILABLE, "submit", "no worker process could prepare the request; "
                          "see the service log, and retry")

    @staticmethod
    def _pick(live: list[_Worker]) -> _Worker:
        """The first worker holding fewer than :data:`QUEUE` requests, else the least busy one: a worker kept
        busy stays warm (measured: a worker woken for every request spends ~1.3x the CPU per request of
        one that finds the next request waiting), and the others take what one cannot."""
        for w in live:
            if len(w.pending) < QUEUE:
                return w
        return min(live, key=lambda x: len(x.pending))

    async def close(self) -> None:
        """Stop every worker (closing its socketpair ends it) and wait for it."""
        self._closing = True
        for t in list(self._respawns):
            with contextlib.suppress(asyncio.CancelledError, CertSrvError):
                await t
        for w in self.workers:
            w.channel.close()
        for w in self.workers:
            try:
                await asyncio.wait_for(asyncio.to_thread(w.proc.wait), 10)
            except TimeoutError:
                w.proc.kill()
                await asyncio.to_thread(w.proc.wait)
            if w.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task


class BatchCommitter:
    """Writes prepared requests in batches: all that arrived while the previous batch was being made durable
    go to :meth:`Authority.commit_prepared` together (one call, one transaction).

    While requests are still being prepared by the workers, a batch waits for them up to ``linger`` seconds
    (measured: a commit costs the writer ~230 us of CPU plus ~70 us per request, so one commit for eight
    requests instead of three saves the writer about a third of its CPU per issuance; the wait is below one
    fsync).

    :param authority: the open Authority.
    :param in_flight: how many requests the workers are preparing now.
    :param max_batch: at most this many requests per transaction.
    :param linger: the longest a ready request waits for others to join its batch.
    :param offload: commit in a thread beside the loop (default: when the store's commits can wait on the
        network, i.e. PostgreSQL: a synchronous standby's answer, or a failover of up to three lease times, must
        never stop the node answering reads and health checks).
    """

    def __init__(self, authority: Any, in_flight: Callable[[], int] = lambda: 0, max_batch: int = 256,
                 linger: float = 0.002, offload: bool | None = None) -> None:
        self.authority = authority
        self.offload = bool(getattr(authority.store, "commits_wait_on_network", False)) if offload is None \
            else offload
        self.in_flight = in_flight
        self.linger = linger
        self.max_batch = max_batch
        self._queue: list[tuple[Any, float, asyncio.Future[Any]]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writing task (in the running loop)."""
        self._task = asyncio.create_task(self._run())

    async def commit(self, prepared: Any, started: float) -> Any:
        """The committed RequestInfo, or None when the serial was taken (prepare again)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((prepared, started, fut))
        _wake(self._waiter)
        info, lsns = await fut
        for lsn in lsns:
            note_unapplied(lsn)  # in the request's own scope: its answer says "committed, not yet applied"
        return info

    def _write(self, items: list[Any], started: list[float]) -> tuple[list[Any], set[int]]:
        with commit_scope() as notes:
            infos = self.authority.commit_prepared(items, started)
        return infos, set(notes)

    async def _wait(self, timeout: float | None) -> None:
        """Until :meth:`commit` queues a request, or ``timeout`` seconds (one future and at most one timer: the
        batch loop runs this several times per batch, and ``asyncio.wait_for`` would make a task each time)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                await self._wait(None)
            while self._queue:
                await self._gather()
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                try:
                    # In the loop's own thread, not asyncio.to_thread: measured with 8 clients, a commit thread
                    # beside the loop costs the process ~240 us of CPU per issuance more (the two threads trade
                    # the GIL for every row), and throughput is ~40% lower. While a batch is made durable (one
                    # fsync) the loop waits; the requests that arrive meanwhile form the next, larger batch.
                    # On PostgreSQL (offload) the commit may wait on the network (a synchronous standby, a
                    # failover): it runs in a thread so the node goes on serving reads and /v1/health (issue 14).
                    items, times = [b[0] for b in batch], [b[1] for b in batch]
                    if self.offload:
                        infos, lsns = await asyncio.to_thread(self._write, items, times)
                    else:
                        infos, lsns = self._write(items, times)
                except BaseException as e:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e if isinstance(e, Exception) else CertSrvError(
                                E_UNEXPECTED, "submit", "the service is stopping"))
                    if not isinstance(e, Exception):
                        raise
                    continue
                for (_, _, fut), info in zip(batch, infos):
                    if not fut.done():
                        fut.set_result((info, lsns))

    async def _gather(self) -> None:
        """Let requests the workers are about to hand over join the batch (at most ``linger`` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while len(self._queue) < self.max_batch and self.in_flight() > 0:
            left = deadline - loop.time()
            if left <= 0:
                return
            await self._wait(left)

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        while self._queue:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def submit_via_workers(app: Any, csr: bytes, *, requester: str, template: str | None,
                             attributes: Mapping[str, str] | None, roles: frozenset[str]) -> Any:
    """``Authority.submit`` with the preparing done by the app's worker pool and the writing by its
    batch committer (same checks, same rows, same answer)."""
    pool: WorkerPool = app["workers"]
    committer: BatchCommitter = app["committer"]
    started = time.monotonic()
    for _ in range(SERIAL_TRIES):
        prepared = await pool.prepare(csr, requester=requester, template=template, attributes=attributes,
                                      roles=roles)
        info = await committer.commit(prepared, started)
        if isinstance(info, CertSrvError):  # issue 14: its request key is another requester's or CSR's
            raise info
        if info is not None:
            return info
    raise no_unused_serial()

