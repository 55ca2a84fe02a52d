"""The route registry and the OpenAPI 3 document served at ``/openapi.json``.

Every route module registers its endpoints with :func:`add_route`, which adds the aiohttp route
and records the operation (roles, schemas, audit flag); the middleware enforces the roles and
audits from the same record, so the document, the checks and the audit log cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import __version__ as _pkg_version
from . import auth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPERATIONS = "operations"  # app key: dict[str, Operation]

ERROR_STATUSES = {
    "400": "Malformed input: bad JSON, missing or wrong field, bad flag (E_INVALIDARG and kin)",
    "403": "The caller lacks the role (E_ACCESSDENIED 0x80070005); nothing changed",
    "404": "No such request, certificate or endpoint",
    "405": "Method not allowed on this path",
    "409": "State forbids the call (e.g. issuing a denied request, sequence errors)",
    "413": "Request body larger than service.max_body; refused before it is read whole",
    "500": "Internal failure (E_UNEXPECTED, corrupt data); never a traceback",
    "503": "The service is stopping or unavailable (RPC_S_SERVER_UNAVAILABLE); a write sent to a standby node "
           "(NotWriter, ERROR_HOST_NODE_NOT_RESOURCE_OWNER 0x80071397, with `writer`: send it there); a write whose "
           "outcome is unknown (OutcomeUnknown, RPC_S_CALL_FAILED 0x800706BE: check before retrying) or that did not "
           "execute (RPC_S_CALL_FAILED_DNE 0x800706BF: safe to retry)",
    "507": "The store refuses writes: disk full (ERROR_DISK_FULL, recovers by itself once space is freed) "
           "or a failed log sync (ERROR_IO_DEVICE, restart required); see GET /health",
}


@dataclass(frozen=True)
class Operation:
    """One endpoint: route, role gate, schemas, audit flag.

    :param method: HTTP method.
    :param path: aiohttp path (``{name}`` or ``{name:regex}`` parameters).
    :param operation_id: unique name; also the route name and the audit log's ``operation``.
    :param summary: one line.
    :param roles: roles allowed (None: anyone); enforced before the handler runs.
    :param description: longer text (the role rule is appended).
    :param tag: OpenAPI tag.
    :param body: JSON schema of the request body (None: no body).
    :param parameters: OpenAPI parameter objects (path and query).
    :param response: JSON schema of the 200 answer.
    :param audit: write the call to the audit log.
    :param response_content_type: media type of the 200 answer.
    :param statuses: other answers that are not error JSON: status -> (description, schema) (e.g. the 503 of a
        health probe on a node of the other role).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    roles: frozenset[str] | None
    description: str = ""
    tag: str = "ca"
    body: dict[str, Any] | None = None
    parameters: Sequence[dict[str, Any]] = field(default_factory=tuple)
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    audit: bool = True
    response_content_type: str = "application/json"
    statuses: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def operations(app: web.Application) -> dict[str, Operation]:
    """The operations registered on ``app``."""
    ops: dict[str, Operation] = app[OPERATIONS]
    return ops


def add_route(
    app: web.Application,
    method: str,
    path: str,
    handler: Handler,
    *,
    operation_id: str,
    summary: str,
    roles: Sequence[str] | frozenset[str] | None,
    description: str = "",
    tag: str = "ca",
    body: dict[str, Any] | None = None,
    parameters: Sequence[dict[str, Any]] = (),
    response: dict[str, Any] | None = None,
    audit: bool = True,
    statuses: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> Operation:
    """Register an endpoint on ``app`` and describe it in the OpenAPI document.

    :param app: the service application.
    :param method: HTTP method.
    :param path: aiohttp path.
    :param handler: ``async def handler(request) -> web.Response``.
    :param operation_id: unique operation name (route name, audit ``operation``).
    :param summary: one line.
    :param roles: roles allowed; None = anyone. The middleware raises E_ACCESSDENIED before the handler.
    :param description: longer text.
    :param tag: OpenAPI tag (``ca``, ``control``, ``backup``).
    :param body: JSON schema of the request body, or None.
    :param parameters: OpenAPI parameter objects.
    :param response: JSON schema of the 200 answer.
    :param audit: write calls to the audit log.
    :param statuses: answers other than 200 that are not error JSON (status -> description, schema).
    """
    ops = operations(app)
    if operation_id in ops:
        raise ValueError(f"duplicate operation id {operation_id}")
    op = Operation(method.upper(), path, operation_id, summary,
                   None if roles is None else frozenset(roles), description, tag, body, tuple(parameters),
                   response or {"type": "object"}, audit, statuses=dict(statuses or {}))
    ops[operation_id] = op
    app.router.add_route(op.method, path, handler, name=operation_id)
    return op


def _openapi_path(path: str) -> str:
    # aiohttp "{name:regex}" -> OpenAPI "{name}"
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c == "{":
            j, depth = i + 1, 1
            while j < len(path) and depth:
                depth += {"{": 1, "}": -1}.get(path[j], 0)
                j += 1
            inner = path[i + 1:j - 1]
            out.append("{" + inner.split(":", 1)[0] + "}")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _roles_text(roles: frozenset[str] | None) -> str:
    if roles is None:
        return "Roles: none needed (any caller)."
    return "Roles: " + ", ".join(sorted(roles)) + "."


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A CertSrvError: HRESULT, its symbolic name and a one-line message (CertSrvError.to_json()).",
    "required": ["hresult", "hresult_hex", "name", "function", "message", "error"],
    "properties": {
        "hresult": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "hresult_hex": {"type": "string", "pattern": "^0x[0-9A-F]{8}$"},
        "name": {"type": "string"},
        "function": {"type": "string"},
        "message": {"type": "string"},
        "error": {"type": "string", "enum": ["CertSrvError", "InvalidArgument", "AccessDenied", "NotFound",
                                              "SequenceError", "Conflict", "CorruptData", "Unavailable",
                                              "StorageError", "NotWriter", "OutcomeUnknown"]},
        "writer": {"type": "object", "description": "NotWriter only (issue 14): the writer node: holder (host:pid), "
                   "epoch, endpoints (where to send the write)"},
    },
}

DESCRIPTION = """\
pycertsrv service: enrollment, certificate administration, server control and online backup of one CA.

Transport: a Unix socket inside the CA home (callers identified by SO_PEERCRED uid/gid) and, when configured,
TLS over TCP requiring a client certificate chained to the configured trust anchor (callers identified by the
certificate's RFC 4514 subject or SHA-256 fingerprint). Grants live in certsrv.toml [[roles]]; the home
directory's owner is Administrator and Operator by default.

Roles (AD CS): Administrator (everything an Officer and an Auditor may do, plus server control),
Officer (issue, deny, resubmit, revoke, unrevoke, publish CRL, view), Operator (backup and restore; server
control), Auditor (view), Enrollee (submit; fetch own requests and certificates). Administrator does not imply
Operator. A call without the needed role answers 403 with E_ACCESSDENIED (0x80070005) and changes nothing.

Errors are JSON bodies carrying the HRESULT, its symbolic name and a message; administrative calls are
written to the audit log (HOME/audit.log, JSON lines).
"""


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every operation registered on ``app``."""
    paths: dict[str, dict[str, Any]] = {}
    tags: set[str] = set()
    for op in operations(app).values():
        tags.add(op.tag)
        responses: dict[str, Any] = {
            "200": {"description": "Success",
                    "content": {op.response_content_type: {"schema": op.response}}},
        }
        for code, text in ERROR_STATUSES.items():
            responses[code] = {"description": text,
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for code, (text, schema) in op.statuses.items():
            responses[code] = {"description": text, "content": {"application/json": {"schema": schema}}}
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": (op.description + "\n\n" if op.description else "") + _roles_text(op.roles),
            "tags": [op.tag],
            "x-roles": None if op.roles is None else sorted(op.roles),
            "responses": responses,
        }
        if op.parameters:
            entry["parameters"] = list(op.parameters)
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        paths.setdefault(_openapi_path(op.path), {})[op.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {"title": "pycertsrv", "version": _pkg_version, "description": DESCRIPTION},
        "tags": [{"name": t} for t in sorted(tags)],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    doc = request.app.get("openapi_doc")
    if doc is None:
        doc = build_document(request.app)
    return web.json_response(doc)


def setup_routes(app: web.Application) -> None:
    """Register ``GET /openapi.json``."""
    add_route(app, "GET", "/openapi.json", openapi_handler, operation_id="openapi",
              summary="This OpenAPI 3 document", roles=auth.OPERATION_ROLES["openapi"], tag="control",
              audit=False, response={"type": "object", "required": ["openapi", "paths"]})
