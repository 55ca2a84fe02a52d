"""Server control and status: ``GET /online`` (IsServerOnline), ``GET /health`` (the store's state),
``GET /status``, ``GET /v1/health`` (role, node, replication, store state, last backups, CRL nextUpdate:
:mod:`pycertsrv.service.health`), ``GET /v1/health/writer`` and ``/v1/health/standby`` (200 only on a node of
that role, issue 14), ``POST /control`` (ServerControl, spec §2.18, §4.1).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import E_INVALIDARG, InvalidArgument
from ..spec import CSCONTROL_RESTART, CSCONTROL_SHUTDOWN, CSCONTROL_SUSPEND  # spec §1.3, §4.1
from . import auth
from . import health as health_mod
from .middleware import json_response, read_model
from .openapi import add_route


class ControlBody(BaseModel):
    """``POST /control`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)
    flags: int = Field(ge=0, le=0xFFFFFFFF)


async def online(request: web.Request) -> web.Response:
    """IsServerOnline (spec §4.2): true when serving, false when suspended or stopping."""
    state = request.app["state"]
    return json_response({"online": state.online, "name": request.app["authority"].name})


def _store_health(request: web.Request) -> Any:
    store = getattr(request.app["authority"], "store", None)
    return None if store is None or not hasattr(store, "health") else store.health()


async def health(request: web.Request) -> web.Response:
    """The store's state: ``ok``, ``degraded: disk full`` (reads go on, writes refused until it recovers
    by itself) or ``failed: log sync error, restart required`` (see pycertsrv.store.health)."""
    h = await asyncio.to_thread(_store_health, request)
    state = h.state if h is not None else "ok"
    status = state.split(":", 1)[0]
    archive = await asyncio.to_thread(_archive_status, request)
    if archive is not None and archive["state"] in ("behind", "stopped") and status == "ok":
        status = "degraded"  # issue 13: an archive far behind or stopped is said loudly (issuance goes on)
    return json_response({"status": status, "store": state, "online": request.app["state"].online,
                          "unapplied": h.unapplied if h is not None else 0,
                          "log_damage": bool(h.log_damage) if h is not None else False, "archive": archive})


def _archive_status(request: web.Request) -> dict[str, Any] | None:
    shipper = request.app.get("archiver")
    return None if shipper is None else dict(shipper.status())


async def status(request: web.Request) -> web.Response:
    """What the service is, where it listens, what recovery did, and who the caller is."""
    app = request.app
    state = app["state"]
    principal: auth.Principal = request["principal"]
    body: dict[str, Any] = {
        "name": app["authority"].name,
        "online": state.online,
        "state": state.state,
        "pid": os.getpid(),
        "version": __version__,
        "home": str(app["home"].root),
        "listeners": list(state.listeners),
        "recovery": state.recovery,
        "caller": principal.to_json(),
        "crl_published": state.crl_published,
        "metrics": state.metrics_listener,
    }
    pool = app.get("workers")
    # Issue 15: the worker processes preparing requests (none: they are prepared in this process).
    body["workers"] = pool.status() if pool is not None else None
    h = await asyncio.to_thread(_store_health, request)
    body["store"] = h.to_json() if h is not None else None
    body["archive"] = await asyncio.to_thread(_archive_status, request)
    return json_response(body)


async def health_v1(request: web.Request) -> web.Response:
    """Role, store state with its reason, the last full and incremental backup, the newest CRL's nextUpdate."""
    app = request.app
    body = await asyncio.to_thread(health_mod.report, app["authority"], online=app["state"].online,
                                   backup_manager=app.get("backup"), crl=app["health_crl"],
                                   archiver=app.get("archiver"), node=app.get("node"))
    return json_response(body)


def _role_probe(want: str) -> Any:
    async def probe(request: web.Request) -> web.Response:
        app = request.app
        ok, body = await asyncio.to_thread(health_mod.role_probe, app["authority"], app.get("node"),
                                           online=app["state"].online, want=want)
        # Patroni's /primary and /replica: 200 when this node has the role, 503 otherwise (a health check, not
        # an error: the body is the node's state, not an error JSON).
        return json_response(body, status=200 if ok else 503)

    probe.__name__ = f"health_{want}"
    probe.__doc__ = f"200 only on a healthy {want} node."
    return probe


async def control(request: web.Request) -> web.Response:
    """ServerControl: 1 = shutdown (after this answer), 2/3 = success doing nothing, other = E_INVALIDARG."""
    body = await read_model(request, ControlBody)
    request["audit"]["flags"] = body.flags
    if body.flags == CSCONTROL_SHUTDOWN:
        request.app["state"].request_stop("ServerControl(CSCONTROL_SHUTDOWN) by " + request["principal"].ident)
        action = "shutdown"
    elif body.flags in (CSCONTROL_SUSPEND, CSCONTROL_RESTART):
        # spec §4.1: "2 or 3 -> not used; the CA returns success without doing anything".
        action = "none"
    else:
        # spec §4.1: "any other value -> error, SHOULD be 0x80070057".
        raise InvalidArgument(E_INVALIDARG, "ServerControl", f"unknown control flags {body.flags}")
    return json_response({"flags": body.flags, "action": action, "out": None})


ONLINE_SCHEMA = {
    "type": "object",
    "required": ["online", "name"],
    "properties": {"online": {"type": "boolean"}, "name": {"type": "string"}},
}
ARCHIVE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "continuous archiving (issue 13; null when off): state ok|retrying|behind|stopped, watermark, "
                   "lag_generations, lag_bytes, lag_seconds, last_error",
}
STATUS_SCHEMA = {
    "type": "object",
    "required": ["name", "online", "state", "pid", "version", "home", "listeners", "caller"],
    "properties": {
        "name": {"type": "string"},
        "online": {"type": "boolean"},
        "state": {"type": "string", "enum": ["running", "suspended", "stopping"]},
        "pid": {"type": "integer"},
        "version": {"type": "string"},
        "home": {"type": "string"},
        "listeners": {"type": "array", "items": {"type": "string"}},
        "recovery": {"type": ["object", "null"]},
        "caller": {"type": "object"},
        "crl_published": {"type": ["string", "null"]},
        "store": {"type": ["object", "null"], "description": "the store's health: state, detail, since, "
                  "unapplied, unapplied_lsns, log_damage, backup_full_required, summary"},
        "archive": ARCHIVE_SCHEMA,
        "metrics": {"type": ["string", "null"], "description": "where /metrics is served ([metrics] listen)"},
        "workers": {"type": ["object", "null"], "description": "issue 15 (null: requests are prepared in the "
                    "service's process): pids, busy (requests each holds), restarts"},
    },
}
HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "store", "online"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
        "store": {"type": "string", "description": "ok | degraded: disk full | degraded: database apply error | "
                  "failed: log sync error, restart required | failed: database sync error, restart required"},
        "online": {"type": "boolean"},
        "unapplied": {"type": "integer", "description": "committed records not yet applied to the database"},
        "log_damage": {"type": "boolean", "description": "damaged log records were found (see GET /status)"},
        "archive": ARCHIVE_SCHEMA,
    },
}
_LAST_BACKUP = {
    "type": ["object", "null"],
    "description": "the newest recorded set of this type (null: none yet)",
    "properties": {"type": {"type": "string", "enum": ["full", "incremental"]}, "backup_id": {"type": "integer"},
                   "time": {"type": ["string", "null"], "description": "when it ended, ISO 8601 UTC"},
                   "duration_seconds": {"type": ["number", "null"]}, "size_bytes": {"type": ["integer", "null"]},
                   "generations": {"type": "array", "items": {"type": "integer"}}},
}
WRITER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "the writer: the lease holder (host:pid), its epoch, where it listens, seconds since it renewed",
    "properties": {"holder": {"type": ["string", "null"]}, "epoch": {"type": "integer"},
                   "endpoints": {"type": "array", "items": {"type": "string"}},
                   "renewed_age_s": {"type": ["number", "null"]}},
}
NODE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "issue 14: this node's role and name (host:pid), the lease epoch and holder, the writer",
    "properties": {"role": {"type": "string", "enum": [health_mod.ROLE_WRITER, health_mod.ROLE_STANDBY]},
                   "name": {"type": "string"}, "epoch": {"type": "integer"}, "holder": {"type": ["string", "null"]},
                   "writer": WRITER_SCHEMA, "lease_ttl": {"type": "number"}, "promotions": {"type": "integer"},
                   "fencings": {"type": "integer"}},
}
REPLICATION_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "PostgreSQL replication (store.replication()): mode sync | async | none | unknown; async "
                   "carries a warning (acknowledged writes can be lost on failover)",
    "properties": {"mode": {"type": "string"}, "warning": {"type": ["string", "null"]},
                   "standbys": {"type": "array", "items": {"type": "object"}}},
}
ROLE_PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["role", "status", "store", "online"],
    "properties": {"role": {"type": "string", "enum": [health_mod.ROLE_WRITER, health_mod.ROLE_STANDBY]},
                   "status": {"type": "string", "enum": ["ok", "degraded", "failed"]}, "store": {"type": "string"},
                   "online": {"type": "boolean"}, "node": NODE_SCHEMA},
}
HEALTH_V1_SCHEMA = {
    "type": "object",
    "required": ["role", "status", "store", "online", "last_backup", "crl", "node", "replication", "warnings"],
    "properties": {
        "role": {"type": "string", "enum": [health_mod.ROLE_WRITER, health_mod.ROLE_STANDBY]},
        "node": NODE_SCHEMA,
        "replication": REPLICATION_SCHEMA,
        "warnings": {"type": "array", "items": {"type": "string"},
                     "description": "what an operator must act on (asynchronous replication, store, archive)"},
        "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
        "store": {"type": "string", "description": "ok | degraded: REASON | failed: REASON"},
        "reason": {"type": ["string", "null"]},
        "summary": {"type": "string"},
        "online": {"type": "boolean"},
        "last_backup": {"type": "object", "properties": {"full": _LAST_BACKUP, "incremental": _LAST_BACKUP}},
        "backup_sessions_open": {"type": "integer"},
        "log": {"type": ["object", "null"], "properties": {"generations": {"type": "integer"},
                                                           "bytes_since_backup": {"type": "integer"}}},
        "crl": {"type": ["object", "null"], "properties": {"number": {"type": "integer"},
                                                           "next_update": {"type": ["string", "null"]}}},
        "archive": {"type": ["object", "null"], "description": "archiving (issue 13): state, lag_seconds (also "
                    "lag_s), lag_bytes, lag_generations, last_shipped_at, last_error; null when off"},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}
CONTROL_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["flags"],
    "properties": {"flags": {"type": "integer", "enum": [1, 2, 3],
                             "description": "1 = CSCONTROL_SHUTDOWN; 2, 3 = no effect; any other value is "
                                            "refused with E_INVALIDARG (spec §4.1)"}},
}
CONTROL_SCHEMA = {
    "type": "object",
    "required": ["flags", "action"],
    "properties": {"flags": {"type": "integer"}, "action": {"type": "string", "enum": ["shutdown", "none"]},
                   "out": {"type": "null"}},
}


def setup_routes(app: web.Application) -> None:
    """Register the control endpoints."""
    add_route(app, "GET", "/online", online, operation_id="online", tag="control",
              summary="IsServerOnline: true when serving, false when suspended or stopping",
              description="spec §2.1, §4.2. When nothing answers, the client raises RPC_S_SERVER_UNAVAILABLE "
                          "(0x800706BA). Also names the CA (used to check a `HOST\\CA Name` config string).",
              roles=auth.OPERATION_ROLES["online"], audit=False, response=ONLINE_SCHEMA)
    add_route(app, "GET", "/health", health, operation_id="health", tag="control",
              summary="Store health: ok, degraded: disk full, or failed: log sync error, restart required",
              description="Answers in every state (reads of the state only). Degraded: writes are refused with "
                          "ERROR_DISK_FULL (0x80070070) until space is freed; the store then applies the committed "
                          "records by itself. Failed: writes are refused with ERROR_IO_DEVICE (0x8007045D) until "
                          "a restart. Details (which records, since when, log damage) in GET /status.",
              roles=auth.OPERATION_ROLES["health"], audit=False, response=HEALTH_SCHEMA)
    add_route(app, "GET", "/status", status, operation_id="status", tag="control",
              summary="Service status: CA name, state, listeners, last recovery, the caller's identity and roles",
              roles=auth.OPERATION_ROLES["status"], audit=False, response=STATUS_SCHEMA)
    app["health_crl"] = health_mod.CRLCache()  # nextUpdate re-read only when the CRL number changes
    add_route(app, "GET", "/v1/health", health_v1, operation_id="health_v1", tag="control",
              summary="Health: role, store state and reason, last full and incremental backup, CRL nextUpdate",
              description="Read-only; answers in every store state. Needs a role (like /status): backup times "
                          "and activity are not for anonymous callers.",
              roles=auth.OPERATION_ROLES["status"], audit=False, response=HEALTH_V1_SCHEMA)
    for want, patroni in ((health_mod.ROLE_WRITER, "/primary"), (health_mod.ROLE_STANDBY, "/replica")):
        add_route(app, "GET", f"/v1/health/{want}", _role_probe(want), operation_id=f"health_{want}", tag="control",
                  summary=f"200 only on a healthy {want} node, else 503 (a load balancer's check, as Patroni's "
                          f"{patroni})",
                  description="Healthy: online and the store not failed. The body is the node's role and state "
                              "either way. Needs no role (load balancers).",
                  roles=auth.OPERATION_ROLES["health"], audit=False, response=ROLE_PROBE_SCHEMA,
                  statuses={"503": (f"This node is not a healthy {want} (its role and state)", ROLE_PROBE_SCHEMA)})
    add_route(app, "POST", "/control", control, operation_id="server_control", tag="control",
              summary="ServerControl (spec §2.18, §4.1): flags 1 = shut down cleanly, 2/3 = no-op, other = 400",
              description="Shutdown answers first, then stops: in-flight requests finish, the checkpoint is "
                          "written and the socket removed. Audited.",
              roles=auth.OPERATION_ROLES["server_control"], body=CONTROL_BODY, response=CONTROL_SCHEMA)
