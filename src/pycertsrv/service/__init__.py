"""The running daemon (aiohttp): listeners, authentication, role checks, JSON mapping, server control.

``serve(home)`` runs it; ``create_app(authority)`` builds the application; route modules register
endpoints with :func:`pycertsrv.service.openapi.add_route` from their ``setup_routes(app)``.
"""

from __future__ import annotations

from .app import ROUTE_MODULES, ServiceState, create_app
from .auth import OPERATION_ROLES, Principal, RoleMap, require
from .openapi import add_route
from .server import run_app, serve, socket_path

__all__ = [
    "OPERATION_ROLES",
    "ROUTE_MODULES",
    "Principal",
    "RoleMap",
    "ServiceState",
    "add_route",
    "create_app",
    "require",
    "run_app",
    "serve",
    "socket_path",
]
