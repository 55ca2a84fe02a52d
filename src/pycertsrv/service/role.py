"""A node's role (issue 14: several ``certsrv serve`` nodes on one PostgreSQL database, one writer).

The store holds the writer lease (:mod:`pycertsrv.store.postgres.lease`); this module is what the service does
with it:

- **writer** (the lease holder, and every SQLite home): serves everything; its writer parts run (the periodic
  CRL, the archive shipper) and it advertises where it listens (``[service] advertise``, default its own
  listeners) so that standbys can name it and clients can follow it;
- **standby**: serves reads (view, get, CRL and CA certificate, status, health); every write operation is
  refused before it runs with ``NotWriter`` (0x80071397 ERROR_HOST_NODE_NOT_RESOURCE_OWNER, HTTP 503, the
  error JSON plus ``writer``), so nothing of it is prepared, signed or logged (HA-CONTRACT "Service").

:meth:`NodeRole.run` polls every ``lease_ttl / 3`` (Patroni's loop_wait is a third of its TTL too: a lease
expires between two polls at most once) and calls ``store.try_promote()`` while standby. A promotion starts the
writer parts and is logged at WARNING (an operator wants to see a failover in the log); a fencing (the store
says ``standby`` through ``on_role_change``) stops them and the node serves reads again: it never exits with a
traceback. With asynchronous replication the service log warns, once per change, that acknowledged writes can
be lost on failover (issue 14 "PostgreSQL replication").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..backup import nodes as backup_nodes
from ..errors import RPC_S_CALL_FAILED_DNE, RPC_S_SERVER_UNAVAILABLE, CertSrvError, NotWriter, Unavailable
from ..store import DATABASE_ERRORS
from ..store.postgres import LEASE_TTL, PgStore

log = logging.getLogger("pycertsrv.service")
ROLE_WRITER = "writer"
ROLE_STANDBY = "standby"
# Operations that change the CA: a standby refuses them before they run (HA-CONTRACT "Service").
WRITE_OPERATIONS = frozenset({"submit", "issue", "deny", "resubmit", "revoke", "unrevoke", "publish_crl"})
REPLICATION_NONE: dict[str, Any] = {"mode": "none", "synchronous_commit": None, "synchronous_standby_names": None,
                                    "standbys": [], "warning": None}
_ERRORS: tuple[type[BaseException], ...] = (CertSrvError, OSError, *DATABASE_ERRORS)


def database_unreachable(err: CertSrvError, writes: bool) -> CertSrvError:
    """A refusal because the database server cannot be reached (RPC_S_SERVER_UNAVAILABLE from the store, after
    its own retries) as HTTP 503; for a write, RPC_S_CALL_FAILED_DNE: it failed before its commit was sent (a
    commit cut in flight is the store's OutcomeUnknown), so nothing was written and a retry is safe (HA-CONTRACT
    "Error codes"). Any other error is returned as it is."""
    if err.hresult != RPC_S_SERVER_UNAVAILABLE or type(err) not in (CertSrvError, Unavailable):
        return err
    if not writes:
        return Unavailable(err.hresult, err.function, err.message)
    return Unavailable(RPC_S_CALL_FAILED_DNE, err.function,
                       f"{err.message}; nothing was written: retry once the database answers")


def advertised(configured: Sequence[str] | None, listeners: Sequence[str]) -> list[str]:
    """Where clients reach this node: ``[service] advertise`` when set, else its own listeners, with a wildcard
    TCP address (``0.0.0.0:8443``: meaningless to another host) named by this host's name."""
    if configured:
        return list(configured)
    out: list[str] = []
    for x in listeners:
        host, sep, port = x.rpartition(":")
        if not x.startswith("unix:") and sep and host.strip("[]") in ("0.0.0.0", "::", ""):
            x = f"{socket.getfqdn()}:{port}"
        out.append(x)
    return out


class NodeRole:
    """This node's role and the parts that run only on the writer.

    :param store: the open store (PostgreSQL: knows the lease; SQLite: always the writer).
    :param lease_ttl: the lease's time to live (seconds): the promotion poll is a third of it.
    :param configured: ``[service] advertise``.
    """

    def __init__(self, store: Any, *, lease_ttl: float | None = None, configured: Sequence[str] | None = None
                 ) -> None:
        self.store = store
        self._multi = isinstance(store, PgStore)  # a SQLite store is its CA's only writer (store.onenode)
        ttl = lease_ttl if lease_ttl is not None else getattr(store, "lease_ttl", None)
        self.lease_ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else LEASE_TTL
        self.configured = list(configured or [])
        self.endpoints: list[str] = []
        self.name = backup_nodes.node_name()
        self.promotions = 0
        self.fencings = 0
        self._parts_on = False
        self._start_parts: Callable[[], None] = lambda: None
        self._stop_parts: Callable[[], None] = lambda: None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replication_mode: str | None = None
        self._last_error: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def multi_node(self) -> bool:
        """Whether the store has a writer lease other nodes share (PostgreSQL); a SQLite home is its own writer."""
        return self._multi

    @property
    def role(self) -> str:
        """``writer`` or ``standby`` (the store's word; a store without a lease is the writer)."""
        role = getattr(self.store, "role", ROLE_WRITER)
        return ROLE_STANDBY if role == ROLE_STANDBY else ROLE_WRITER

    @property
    def is_writer(self) -> bool:
        """Whether this node commits."""
        return self.role == ROLE_WRITER

    @property
    def lease_fresh(self) -> bool:
        """Whether this node is the writer with a lease the database confirmed within the lease time (a writer
        thawed after SIGSTOP is not, until its next renewal fences it: the load balancer must not pick it)."""
        return self.is_writer and bool(getattr(self.store, "lease_fresh", True))

    @property
    def epoch(self) -> int:
        """The lease epoch this node knows (0 on SQLite)."""
        e = getattr(self.store, "epoch", 0)
        return int(e) if isinstance(e, int) else 0

    def writer(self) -> dict[str, Any]:
        """Who writes: ``{holder, epoch, endpoints, renewed_age_s}`` (this node on SQLite)."""
        if hasattr(self.store, "writer_info"):
            try:
                info = dict(self.store.writer_info())
            except _ERRORS as e:
                return {"holder": None, "epoch": self.epoch, "endpoints": [], "renewed_age_s": None,
                        "error": str(e)}
            if not info.get("endpoints") and self.is_writer:
                info["endpoints"] = list(self.endpoints)  # a one-node store records none: this node's own
            return info
        return {"holder": self.name, "epoch": self.epoch, "endpoints": list(self.endpoints), "renewed_age_s": 0.0}

    def refuse_write(self, function: str) -> None:
        """NotWriter (HTTP 503 naming the writer) unless this node is the writer."""
        if not self.is_writer:
            raise NotWriter.naming(function, self.writer())

    def refuse_backup(self, function: str) -> None:
        """BackupPrepare on a standby: busy (the claim's Conflict naming its node) while a live backup runs anywhere
        in the cluster, else NotWriter (backups roll and truncate the log: the writer's work). The probe claims
        with a time to live of 0, so it never stands in the way of a real claim, and is released at once."""
        if self.is_writer:
            return
        cid = backup_nodes.claim(self.store, 0.0)
        if cid is not None:
            backup_nodes.release(self.store, cid, 0.0)
        self.refuse_write(function)

    def to_json(self) -> dict[str, Any]:
        """``node`` of ``GET /v1/health``: this node's role and name, the epoch, the lease holder, the writer."""
        w = self.writer()
        return {"role": self.role, "name": self.name, "epoch": self.epoch, "holder": w.get("holder"),
                "writer": w, "lease_ttl": self.lease_ttl, "promotions": self.promotions, "fencings": self.fencings}

    def replication(self) -> dict[str, Any]:
        """``store.replication()``: mode sync | async | none and the store's warning; ``unknown`` when unreadable."""
        if not hasattr(self.store, "replication"):
            return dict(REPLICATION_NONE)
        try:
            rep = dict(self.store.replication())
        except _ERRORS as e:
            return {**REPLICATION_NONE, "mode": "unknown", "warning": f"replication state unreadable: {e}"}
        return rep  # the store words its own warning (store/postgres/replication.py)

    # ------------------------------------------------------------------ writer parts

    def bind(self, loop: asyncio.AbstractEventLoop, listeners: Sequence[str], start_parts: Callable[[], None],
             stop_parts: Callable[[], None]) -> None:
        """Called by the server once it listens: what to advertise and how to start/stop the writer parts."""
        self._loop = loop
        self._changed = asyncio.Event()
        self.endpoints = advertised(self.configured, listeners)
        self._start_parts, self._stop_parts = start_parts, stop_parts
        if hasattr(self.store, "on_role_change"):
            self.store.on_role_change(self._role_changed)

    def _role_changed(self, role: str) -> None:
        """The store's callback (any thread): wake :meth:`run` at once (a fencing must stop the parts now)."""
        loop, ev = self._loop, self._changed
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the service is stopping
                loop.call_soon_threadsafe(ev.set)

    async def settle(self) -> None:
        """Start or stop the writer parts to match the role (the server calls it once before serving)."""
        if self.is_writer and not self._parts_on:
            await self._became_writer()
        elif not self.is_writer and self._parts_on:
            await self._became_standby()
        elif not self.is_writer and not self._parts_on and self.promotions == 0 and self.fencings == 0:
            w = await asyncio.to_thread(self.writer)  # reads the lease row: never in the event loop
            log.info("this node is a STANDBY: reads are served, writes are refused naming the writer %s (epoch %s, "
                     "at %s); it takes over when that writer's lease expires (lease_ttl %gs)", w.get("holder"),
                     w.get("epoch"), ", ".join(w.get("endpoints") or []) or "no endpoint advertised",
                     self.lease_ttl)

    async def _became_writer(self) -> None:
        if hasattr(self.store, "advertise"):
            await asyncio.to_thread(self.store.advertise, list(self.endpoints))
        self._start_parts()
        self._parts_on = True

    async def _became_standby(self) -> None:
        self._parts_on = False
        await asyncio.to_thread(self._stop_parts)  # joins the shipper's thread: not in the event loop
        self.fencings += 1
        w = await asyncio.to_thread(self.writer)
        log.warning("this node was FENCED: another node took the writer lease (%s, epoch %s); writer parts "
                    "stopped, serving reads as a standby", w.get("holder"), w.get("epoch"))

    async def _promote(self) -> None:
        before = await asyncio.to_thread(self.writer)
        if not await asyncio.to_thread(self.store.try_promote):
            return
        self.promotions += 1
        log.warning("this node is now the WRITER (lease epoch %d; the previous writer %s, epoch %s, stopped "
                    "renewing its lease); counters recomputed from the database, writer parts started",
                    self.epoch, before.get("holder") or "none", before.get("epoch"))
        await self._became_writer()

    def _check_replication(self) -> None:
        """Log the asynchronous-replication warning when the mode changes (not at every poll)."""
        rep = self.replication()
        mode = rep.get("mode")
        if mode != self._replication_mode:
            self._replication_mode = str(mode)
            if rep.get("warning"):
                log.warning("replication %s: %s", mode, rep["warning"])
            elif mode == "sync":
                log.info("replication is synchronous: an acknowledged write is on a standby server too")

    async def run(self) -> None:
        """Poll every ``lease_ttl / 3``: promote a standby whose writer's lease expired, follow a fencing."""
        assert self._changed is not None, "bind() first"
        interval = max(0.05, self.lease_ttl / 3)
        replication_every = max(1, int(60 / interval))  # the replication state: about once a minute
        n = 0
        while True:
            try:
                if n % replication_every == 0 and self.multi_node:
                    await asyncio.to_thread(self._check_replication)
                n += 1
                if not self.is_writer and self._parts_on:
                    await self._became_standby()
                if not self.is_writer and self.multi_node:
                    await self._promote()
                elif self.is_writer and not self._parts_on:
                    await self._became_writer()
                self._last_error = None
            except _ERRORS as e:
                # The database is unreachable or the lease was lost meanwhile: try again at the next poll (said
                # once per distinct failure, not at every poll).
                if str(e) != self._last_error:
                    log.warning("node role: %s (retrying every %.1fs)", e, interval)
                    self._last_error = str(e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
            self._changed.clear()

    async def stop(self) -> None:
        """Stop the writer parts (the service is stopping)."""
        if self._parts_on:
            self._parts_on = False
            await asyncio.to_thread(self._stop_parts)


__all__ = ["ROLE_STANDBY", "ROLE_WRITER", "WRITE_OPERATIONS", "NodeRole", "advertised", "database_unreachable"]
