"""The service's aiohttp application factory.

``create_app(authority)`` builds the app: ``app["authority"]``, ``app["config"]``, ``app["home"]``, ``app["metrics"]``,
``app["roles"]`` (:class:`RoleMap`), ``app["node"]`` (:class:`NodeRole`, issue 14),
``app["audit"]`` (:class:`AuditLog`), ``app["state"]``
(:class:`ServiceState`), ``app["backup"]`` (set by the backup routes; None until then), and the routes
of every module in :data:`ROUTE_MODULES` (each has ``setup_routes(app)``).
"""

from __future__ import annotations

import asyncio
import importlib
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Config
from ..home import Home
from .audit import AuditLog
from .auth import RoleMap
from .commit_note import commit_note_middleware
from .metrics import ServiceMetrics
from .middleware import service_middleware
from .openapi import OPERATIONS, build_document
from .role import NodeRole

# String app keys are the contract (app["authority"], app["backup"]); silence aiohttp's AppKey advice.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning)

# Route modules, each with ``setup_routes(app)``; add one line per module.
ROUTE_MODULES: list[str] = [
    "pycertsrv.service.openapi",
    "pycertsrv.service.control_routes",
    "pycertsrv.service.ca_routes",
    "pycertsrv.service.crl_routes",
    "pycertsrv.service.backup_routes",
    "pycertsrv.service.ui_routes",
]


class ServiceState:
    """Run state shared by the server loop and the handlers.

    ``state``: ``running`` (online), ``suspended`` (answers, IsServerOnline false) or ``stopping``.
    """

    def __init__(self) -> None:
        self.state = "running"
        self.listeners: list[str] = []
        self.recovery: dict[str, Any] | None = None
        self.crl_published: str | None = None
        self.metrics_listener: str | None = None  # where /metrics is served ([metrics] listen), if anywhere
        self.stop_reason: str | None = None
        self._stop_cb: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def online(self) -> bool:
        """IsServerOnline's answer (spec §4.2): running and accepting requests."""
        return self.state == "running"

    def on_stop(self, loop: asyncio.AbstractEventLoop, cb: Callable[[], None]) -> None:
        """Set what :meth:`request_stop` triggers (the server loop's stop event)."""
        self._loop, self._stop_cb = loop, cb

    def request_stop(self, reason: str) -> None:
        """Begin a clean shutdown (thread-safe): state ``stopping``, then the server drains and closes."""
        if self.state == "stopping":
            return
        self.state = "stopping"
        self.stop_reason = reason
        if self._loop is not None and self._stop_cb is not None:
            self._loop.call_soon_threadsafe(self._stop_cb)

    def crl_done(self) -> None:
        """Record a CRL publication time."""
        self.crl_published = datetime.now(UTC).isoformat(timespec="seconds")


def create_app(authority: Any, *, config: Config | None = None, home: Home | None = None) -> web.Application:
    """Build the service application around an open Authority.

    :param authority: the open :class:`pycertsrv.ca.Authority` (holds the home lock).
    :param config: the home's configuration (default: ``authority.config``).
    :param home: the home (default: ``authority.home``).
    """
    cfg: Config = config if config is not None else authority.config
    hm: Home = home if home is not None else authority.home
    app = web.Application(middlewares=[commit_note_middleware, service_middleware],
                          client_max_size=cfg.service.max_body)
    app["authority"] = authority
    app["config"] = cfg
    app["home"] = hm
    app["roles"] = RoleMap.for_home(hm.root, cfg.roles)
    audit_path = Path(cfg.service.audit_log)
    app["audit"] = AuditLog(audit_path if audit_path.is_absolute() else hm.root / audit_path)
    app["state"] = ServiceState()
    app["backup"] = None
    # Issue 14: writer or standby (a SQLite home is always the writer); the server binds it once listening.
    store = getattr(authority, "store", None)
    app["node"] = None if store is None else NodeRole(
        store, lease_ttl=getattr(cfg.store, "lease_ttl", None), configured=cfg.service.advertise)
    # Counters at the event (the Authority reports to it), gauges at scrape; served only when configured.
    app["metrics"] = ServiceMetrics(authority, backup_manager=lambda: app.get("backup"),
                                    online=lambda: bool(app["state"].online),
                                    archiver=lambda: app.get("archiver"))
    if hasattr(authority, "set_observer"):
        authority.set_observer(app["metrics"])
    app[OPERATIONS] = {}
    for name in ROUTE_MODULES:
        importlib.import_module(name).setup_routes(app)
    app["openapi_doc"] = build_document(app)

    async def _close_audit(app: web.Application) -> None:
        app["audit"].close()
        if hasattr(authority, "set_observer"):
            authority.set_observer(None)

    app.on_cleanup.append(_close_audit)
    return app
