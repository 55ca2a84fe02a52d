"""The one middleware of the service: identify the caller, gate on the operation's roles, bound the body,
turn every failure into a JSON ``CertSrvError`` body with its HTTP status, write the audit record.

Also the body helpers handlers use: :func:`read_model` (JSON -> pydantic model, 4xx on anything wrong).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_CLASSES,
    ERROR_FILE_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
    ERROR_TIMEOUT,
    CertSrvError,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_oserror,
)
from . import auth
from .openapi import operations
from .role import WRITE_OPERATIONS, database_unreachable

log = logging.getLogger("pycertsrv.service")
M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(InvalidArgument):
    """Internal: body over ``service.max_body`` (sent as InvalidArgument with HTTP 413)."""

    http_status = 413


class BodyTimeout(InvalidArgument):
    """Internal: body not received within ``service.body_timeout`` (sent with HTTP 408, then the connection
    is closed: a slowloris client holds nothing)."""

    http_status = 408


class MethodNotAllowed(InvalidArgument):
    """Internal: method not routed on this path (sent as InvalidArgument with HTTP 405)."""

    http_status = 405
    allowed: frozenset[str] = frozenset()


def error_response(err: CertSrvError, status: int | None = None) -> web.Response:
    """The JSON error answer for ``err`` (``CertSrvError.to_json()``), status from its class."""
    body = err.to_json()
    # The client rebuilds the nearest public class (error_from_json); internal subclasses only pick a status.
    body["error"] = next(c.__name__ for c in type(err).__mro__ if c.__name__ in ERROR_CLASSES)
    return web.json_response(body, status=status or err.http_status)


def _from_http_exception(request: web.Request, e: web.HTTPException) -> CertSrvError:
    what = f"{request.method} {request.path}"
    if e.status == 404:
        return NotFound(ERROR_FILE_NOT_FOUND, what, "no such endpoint (see /openapi.json)")
    if e.status == 405:
        err = MethodNotAllowed(ERROR_NOT_SUPPORTED, what, f"method {request.method} not allowed here")
        err.allowed = frozenset(getattr(e, "allowed_methods", ()) or ())
        return err
    if e.status == 413:
        return BodyTooLarge(E_INVALIDARG, what, f"request body exceeds the limit of "
                            f"{request.app['config'].service.max_body} bytes (service.max_body)")
    return InvalidArgument(E_INVALIDARG, what, e.reason or f"HTTP {e.status}")


@web.middleware
async def service_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Identify, gate, run, map errors, audit (see the module docstring)."""
    app = request.app
    route = request.match_info.route
    op = operations(app).get(route.name or "") if route is not None else None
    principal = auth.identify(request.transport, app["roles"], request.protocol)
    request["principal"] = principal
    request["operation"] = op.operation_id if op else None
    request["audit"] = {}
    error: dict[str, Any] | None = None
    status = 500
    try:
        try:
            limit = app["config"].service.max_body
            length = request.content_length
            if length is not None and length > limit:
                # Refused before anything is read (issue: "refused before they are read whole").
                raise BodyTooLarge(E_INVALIDARG, f"{request.method} {request.path}",
                                   f"request body of {length} bytes exceeds the limit of {limit} bytes "
                                   "(service.max_body)")
            if op is not None and op.roles is not None:
                auth.require(request, *op.roles)
            node = app.get("node")
            if op is not None and node is not None and op.operation_id in WRITE_OPERATIONS and not node.is_writer:
                # Issue 14: a standby refuses a write before anything of it runs, naming the writer (HTTP 503).
                # Naming it reads the lease row, which may wait out a database outage: off the loop.
                await asyncio.to_thread(node.refuse_write, op.operation_id)
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            raise _from_http_exception(request, e) from None
        except CertSrvError:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except ConnectionError as e:
            # The client went away mid-request (closed, killed, reset): its problem, not ours. One line, no
            # traceback; nothing can be answered, so the connection is closed.
            log.info("client disconnected during %s %s (%s)", request.method, request.path,
                     type(e).__name__)
            _close_connection(request)
            raise CertSrvError(E_UNEXPECTED, f"{request.method} {request.path}", "client disconnected") from None
        except OSError as e:
            # A full, read-only or foreign file system under the service: its HRESULT and path (issue 10).
            log.error("%s %s: file system error: %s", request.method, request.path, e)
            raise from_oserror(e) from None
        except Exception:
            log.exception("unexpected failure in %s %s", request.method, request.path)
            raise CertSrvError(E_UNEXPECTED, f"{request.method} {request.path}",
                               "internal error (see the service log)") from None
    except CertSrvError as caught:
        err = database_unreachable(caught, op is not None and op.operation_id in WRITE_OPERATIONS)
        if isinstance(err, Unavailable):
            log.info("%s %s: %s", request.method, request.path, err)
        resp = error_response(err)
        if isinstance(err, MethodNotAllowed):
            resp.headers["Allow"] = ", ".join(sorted(err.allowed))  # RFC 9110 §15.5.6
        error = err.to_json()
    if request.get("body_timeout") is not None:
        # Answer, then close: the rest of the body is never waited for (no lingering read).
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            pass
        _close_connection(request)
    status = resp.status
    # Administrative calls are audited; refusals (403) of any operation too.
    if op is not None and (op.audit or status == 403):
        app["audit"].write(principal, op.operation_id, request.method, request.path, status, error,
                           request["audit"] or None)
    return resp


def _close_connection(request: web.Request) -> None:
    """Close the request's connection now (aiohttp would otherwise linger reading an unread body)."""
    proto = request.protocol
    if proto is not None:
        proto.force_close()
    elif request.transport is not None:
        request.transport.close()


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (bounded by ``service.max_body`` and ``service.body_timeout``), or
    InvalidArgument."""
    what = request.get("operation") or f"{request.method} {request.path}"
    timeout = float(request.app["config"].service.body_timeout)
    try:
        # A body that came whole with the headers (an issuance's does) has nothing to wait for: no timer is armed.
        async with asyncio.timeout(None if request.content.is_eof() else timeout):
            raw = await request.read()
    except TimeoutError:
        # Slowloris: a body sent slowly or never finished would hold the connection forever.
        log.info("%s %s: request body not received within %gs (service.body_timeout); connection closed",
                 request.method, request.path, timeout)
        err = BodyTimeout(ERROR_TIMEOUT, str(what), f"the request body was not received within {timeout:g}s "
                          "(service.body_timeout); send the whole body at once")
        request["body_timeout"] = err
        raise err from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(E_INVALIDARG, str(what), f"request body exceeds the limit of "
                           f"{request.app['config'].service.max_body} bytes (service.max_body)") from None
    if not raw:
        raise InvalidArgument(E_INVALIDARG, str(what), "a JSON object body is required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(E_INVALIDARG, str(what), f"malformed JSON body: {e}") from None


async def read_model(request: web.Request, model: type[M]) -> M:
    """Parse and validate the JSON body as ``model``; a missing or wrong field names itself in a 400."""
    what = request.get("operation") or f"{request.method} {request.path}"
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidArgument(E_INVALIDARG, str(what), f"the body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidArgument(E_INVALIDARG, str(what), validation_message(e)) from None


# pydantic error types in our words: one short clause naming the field (never pydantic's own sentence).
_VALIDATION_WORDS = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request (remove it)",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "string_too_short": "is empty",
    "string_too_long": "is too long",
}


def validation_message(e: ValidationError) -> str:
    """The first validation error as one line: ``field 'csr' is empty`` (see the OpenAPI schema)."""
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    words = _VALIDATION_WORDS.get(str(first.get("type", "")))
    if words is None:
        return f"field {where!r} is not valid: {first['msg']}; see /openapi.json"
    return f"field {where!r} {words}; see /openapi.json"


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.json_response(data, status=status)
