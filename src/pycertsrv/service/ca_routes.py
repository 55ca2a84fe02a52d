"""Enrollment and administration endpoints: thin JSON shells over :class:`pycertsrv.ca.Authority`.

Each handler parses, calls ONE Authority method in a worker thread (the Authority is synchronous and
thread-safe), and renders ``RequestInfo.to_json()``. Roles are enforced by the middleware from the
operation table (:data:`pycertsrv.service.auth.OPERATION_ROLES`); Enrollee's "own requests only" rule
is checked here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict

from ..ca.paging import MAX_OFFSET, PAGE_DEFAULT, PAGE_MAX, check_page
from ..errors import E_ACCESSDENIED, E_INVALIDARG, AccessDenied, InvalidArgument, NotFound
from ..requestkey import MAX_REQUEST_KEY, REQUEST_KEY, keyed_attributes
from . import auth
from .middleware import json_response, read_model
from .openapi import add_route
from .workers import submit_via_workers

T = TypeVar("T")

MAX_ID = (1 << 63) - 1
# RFC 5280 §4.1.2.2: serial numbers are positive, at most 20 octets (leading zeros tolerated).
SERIAL_PATTERN = "^0{0,23}[1-9a-fA-F][0-9a-fA-F]{0,39}$"
SERIAL_RE = re.compile(SERIAL_PATTERN)
DISPOSITIONS = {"pending": 9, "issued": 20, "revoked": 21, "error": 30, "denied": 31}
# RFC 5280 §5.3.1 reasons a revoke may carry (7 unused; removeFromCRL only on delta CRLs -> unrevoke).
REVOCATION_REASONS = [
    "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
    "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
]


class SubmitBody(BaseModel):
    """``POST /ca/requests``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # An empty csr is the core's to refuse ("request is empty"), with the same words as a direct submit.
    csr: str
    template: str | None = None
    attributes: dict[str, str] | None = None
    # Issue 14: the client's idempotency key (pycertsrv.ca.requestkey): a submit whose key the database holds
    # returns that request's answer, never a second certificate.
    request_key: str | None = None


class RevokeBody(BaseModel):
    """``POST /ca/certificates/{serial}/revoke``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str | int = "unspecified"
    invalidity_date: str | None = None


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _request_id(request: web.Request) -> int:
    raw = request.match_info["request_id"]
    if not raw.isascii() or not raw.isdigit() or not (1 <= int(raw) <= MAX_ID):
        raise InvalidArgument(E_INVALIDARG, str(request["operation"]),
                              f"request id must be a positive integer, not {raw[:40]!r}")
    rid = int(raw)
    request["audit"]["request_id"] = rid
    return rid


def _serial(request: web.Request, raw: str | None = None) -> str:
    s = request.match_info["serial"] if raw is None else raw
    if not SERIAL_RE.fullmatch(s):
        raise InvalidArgument(E_INVALIDARG, str(request["operation"]),
                              f"serial must be a positive hex number of at most 40 digits, not {s[:48]!r}")
    s = s.upper()
    request["audit"]["serial"] = s
    return s


def _decode_csr(request: web.Request, text: str) -> bytes:
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(E_INVALIDARG, str(request["operation"]),
                              "csr must be PEM text or base64 DER") from None


def _info(info: Any) -> dict[str, Any]:
    d: dict[str, Any] = info.to_json()
    return d


def _reads_all(principal: auth.Principal) -> bool:
    return principal.has_any(auth.READ_ALL_ROLES)


def _check_own(request: web.Request, info: Any) -> None:
    principal: auth.Principal = request["principal"]
    if not _reads_all(principal) and getattr(info, "requester", None) != principal.ident:
        raise AccessDenied(E_ACCESSDENIED, str(request["operation"]),
                           f"{principal.ident} (Enrollee) may read only its own requests")


def _cert_body(der: bytes) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    return {"serial": f"{cert.serial_number:X}",
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode()}


# ------------------------------------------------------------------------------------------- handlers

async def submit(request: web.Request) -> web.Response:
    """Submit a CSR; the requester is the authenticated caller, never a field of the body, and the
    caller's roles decide which templates and subjects it may have (issue 9). A submit whose request key the
    database holds is answered with that request, and nothing is signed or written (issue 14)."""
    body = await read_model(request, SubmitBody)
    attributes = keyed_attributes(body.attributes, body.request_key)
    key = attributes.get(REQUEST_KEY)
    csr = _decode_csr(request, body.csr)
    a = request.app["authority"]
    principal: auth.Principal = request["principal"]
    if key is not None:
        request["audit"]["request_key"] = key
    if request.app.get("workers") is not None:  # issue 15: prepared by a worker process, written here
        # A retry is answered before a worker signs anything (the writer decides a race: commit_prepared).
        info: Any = await _call(a.request_key_answer, key, principal.ident, csr) if key is not None else None
        if info is None:
            info = await submit_via_workers(request.app, csr, requester=principal.ident, template=body.template,
                                            attributes=attributes or None, roles=principal.roles)
    else:
        info = await _call(a.submit, csr, requester=principal.ident, template=body.template,
                           attributes=attributes or None, roles=principal.roles)
    request["audit"].update(request_id=info.request_id, disposition=info.disposition_name)
    answer = _info(info)
    if key is not None:
        answer["request_key"] = key
    return json_response(answer)


async def get_request(request: web.Request) -> web.Response:
    """A request's state (and certificate once issued)."""
    rid = _request_id(request)
    info = await _call(request.app["authority"].get_request, rid)
    _check_own(request, info)
    return json_response(_info(info))


async def get_request_certificate(request: web.Request) -> web.Response:
    """The certificate issued for a request."""
    rid = _request_id(request)
    a = request.app["authority"]
    if not _reads_all(request["principal"]):
        _check_own(request, await _call(a.get_request, rid))
    der = await _call(a.get_certificate, rid)
    return json_response(_cert_body(der))


async def get_certificate(request: web.Request) -> web.Response:
    """A certificate by serial number."""
    serial = _serial(request)
    a = request.app["authority"]
    if not _reads_all(request["principal"]):
        found = await _call(a.view, serial=serial, limit=1)
        if not found:
            raise NotFound(None, str(request["operation"]), f"no certificate with serial {serial}")
        _check_own(request, found[0])
    der = await _call(a.get_certificate, serial)
    return json_response(_cert_body(der))


def _resolver(method: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        rid = _request_id(request)
        info = await _call(getattr(request.app["authority"], method), rid, by=request["principal"].ident)
        request["audit"]["disposition"] = info.disposition_name
        return json_response(_info(info))

    handler.__name__ = method
    handler.__doc__ = f"{method} a request."
    return handler


async def revoke(request: web.Request) -> web.Response:
    """Revoke a certificate (reason name or RFC 5280 code, optional invalidity date)."""
    serial = _serial(request)
    body = await read_model(request, RevokeBody)
    when: datetime | None = None
    if body.invalidity_date is not None:
        try:
            when = datetime.fromisoformat(body.invalidity_date)
        except ValueError:
            raise InvalidArgument(E_INVALIDARG, "revoke", f"invalidity_date {body.invalidity_date[:40]!r} is "
                                  "not ISO 8601") from None
        if when.tzinfo is None:
            raise InvalidArgument(E_INVALIDARG, "revoke", "invalidity_date needs a time zone (e.g. Z or +00:00)")
    request["audit"]["reason"] = body.reason
    info = await _call(request.app["authority"].revoke, serial, body.reason, when, by=request["principal"].ident)
    return json_response(_info(info))


async def unrevoke(request: web.Request) -> web.Response:
    """Take a certificate off hold."""
    serial = _serial(request)
    info = await _call(request.app["authority"].unrevoke, serial, by=request["principal"].ident)
    return json_response(_info(info))


async def publish_crl(request: web.Request) -> web.Response:
    """Publish a new CRL now."""
    crl = await _call(request.app["authority"].publish_crl)
    request.app["state"].crl_done()
    body = crl_json(crl)
    request["audit"]["crl_number"] = body.get("number", body.get("crl_number"))
    return json_response(body)


def crl_json(crl: Any) -> dict[str, Any]:
    """``CRLInfo`` as JSON (``to_json()`` when it has one, else its public attributes)."""
    if hasattr(crl, "to_json"):
        d: dict[str, Any] = crl.to_json()
        return d
    import dataclasses

    if dataclasses.is_dataclass(crl):
        return {k: (str(v) if not isinstance(v, int | float | str | bool | type(None)) else v)
                for k, v in dataclasses.asdict(crl).items()}  # type: ignore[arg-type]
    return {"crl": str(crl)}


_VIEW_PARAMS = {"disposition", "serial", "request_id", "expired", "limit", "offset"}


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not (low <= int(raw) <= high):
        raise InvalidArgument(E_INVALIDARG, "view", f"{name} must be an integer in {low}..{high}, not {raw[:40]!r}")
    return int(raw)


async def view(request: web.Request) -> web.Response:
    """List requests with filters and paging."""
    q = request.query
    unknown = sorted(set(q) - _VIEW_PARAMS)
    if unknown:
        raise InvalidArgument(E_INVALIDARG, "view", f"unknown query parameter {unknown[0]!r}")
    for k in q:
        if len(q.getall(k)) > 1:
            raise InvalidArgument(E_INVALIDARG, "view", f"query parameter {k!r} given more than once")
    kw: dict[str, Any] = {}
    if "disposition" in q:
        d = q["disposition"]
        if d not in DISPOSITIONS:
            raise InvalidArgument(E_INVALIDARG, "view", f"disposition must be one of {', '.join(DISPOSITIONS)}, "
                                  f"not {d[:40]!r}")
        kw["disposition"] = DISPOSITIONS[d]
    if "serial" in q:
        kw["serial"] = _serial(request, q["serial"])
    if "request_id" in q:
        kw["request_id"] = _int_param(request, "request_id", 0, 1, MAX_ID)
    if "expired" in q:
        e = q["expired"]
        if e not in ("true", "false"):
            raise InvalidArgument(E_INVALIDARG, "view", f"expired must be true or false, not {e[:40]!r}")
        kw["expired"] = e == "true"
    # ca.paging: the one paging rule, the same as a direct Authority.view.
    limit = _int_param(request, "limit", PAGE_DEFAULT, 0, MAX_OFFSET)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    check_page(limit, offset)
    items = await _call(request.app["authority"].view, limit=limit, offset=offset, **kw)
    return json_response({"items": [_info(i) for i in items], "limit": limit, "offset": offset,
                          "count": len(items)})


async def ca_info(request: web.Request) -> web.Response:
    """The CA's name and certificate (public, as published)."""
    a = request.app["authority"]
    pem = a.certificate.public_bytes(serialization.Encoding.PEM).decode()
    return json_response({"name": a.name, "certificate_pem": pem})


# ------------------------------------------------------------------------------------------- schemas

NULLABLE_STR = {"type": ["string", "null"]}
REQUEST_INFO: dict[str, Any] = {
    "type": "object",
    "description": "RequestInfo.to_json(): a row of the Request table with its certificate columns.",
    "required": ["request_id", "disposition", "disposition_name"],
    "properties": {
        "request_id": {"type": "integer"},
        "disposition": {"type": "integer", "description": "9 pending, 20 issued, 21 revoked, 30 error, 31 denied"},
        "disposition_name": {"type": "string"},
        "status_code": {"type": ["integer", "null"], "description": "HRESULT of the disposition"},
        "message": NULLABLE_STR,
        "requester": NULLABLE_STR,
        "submitted_at": NULLABLE_STR,
        "resolved_at": NULLABLE_STR,
        "serial": NULLABLE_STR,
        "subject": NULLABLE_STR,
        "not_before": NULLABLE_STR,
        "not_after": NULLABLE_STR,
        "revoked_at": NULLABLE_STR,
        "revocation_reason": {"type": ["integer", "null"], "description": "RFC 5280 §5.3.1 CRLReason code"},
        "revocation_reason_name": NULLABLE_STR,
        "invalidity_date": NULLABLE_STR,
        "request_subject": NULLABLE_STR,
        "template": NULLABLE_STR,
        "thumbprint": NULLABLE_STR,
        "status_hex": NULLABLE_STR,
        "certificate_pem": NULLABLE_STR,
        "request_key": {"type": "string", "description": "submit only: the request key the request holds"},
    },
}
CERT_BODY = {
    "type": "object",
    "required": ["serial", "certificate_pem"],
    "properties": {"serial": {"type": "string"}, "certificate_pem": {"type": "string"}},
}
REQUEST_LIST = {
    "type": "object",
    "required": ["items", "limit", "offset", "count"],
    "properties": {"items": {"type": "array", "items": REQUEST_INFO}, "limit": {"type": "integer"},
                   "offset": {"type": "integer"}, "count": {"type": "integer"}},
}
SUBMIT_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["csr"],
    "properties": {
        "csr": {"type": "string", "minLength": 1, "description": "PKCS#10 request: PEM text or base64 DER"},
        "template": {"type": ["string", "null"], "description": "certificate template (default: policy's)"},
        "attributes": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                       "description": "request attributes name: value (as certreq -attrib)"},
        "request_key": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_REQUEST_KEY,
                        "pattern": "^[ -~]+$",
                        "description": "the client's idempotency key (issue 14): a submit whose key the database "
                                       "holds answers that request (same id, certificate, disposition) and writes "
                                       "nothing; the client makes a uuid4 hex unless given one"},
    },
}
REVOKE_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reason": {"anyOf": [{"type": "string", "enum": REVOCATION_REASONS},
                             {"type": "integer", "enum": [0, 1, 2, 3, 4, 5, 6, 9, 10]}],
                   "description": "RFC 5280 §5.3.1 CRLReason name or code (default unspecified); "
                                  "removeFromCRL (8) is for delta CRLs: use unrevoke"},
        "invalidity_date": {"type": ["string", "null"], "format": "date-time",
                            "description": "RFC 5280 §5.3.2 invalidity date, ISO 8601 with a time zone"},
    },
}
CRL_INFO = {"type": "object", "description": "CRLInfo.to_json(): number, this/next update, file, entries."}
CA_INFO = {
    "type": "object",
    "required": ["name", "certificate_pem"],
    "properties": {"name": {"type": "string"}, "certificate_pem": {"type": "string"}},
}
P_REQUEST_ID = {"name": "request_id", "in": "path", "required": True, "example": 1,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
P_SERIAL = {"name": "serial", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": SERIAL_PATTERN}}
VIEW_PARAMS = [
    {"name": "disposition", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(DISPOSITIONS)}},
    {"name": "serial", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": SERIAL_PATTERN}},
    {"name": "request_id", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
    {"name": "expired", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}},
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
]

OWN = "Enrollee callers may read only requests they submitted (requester = their identity); others get 403."


def setup_routes(app: web.Application) -> None:
    """Register the enrollment and administration endpoints."""
    r = auth.OPERATION_ROLES
    add_route(app, "GET", "/ca", ca_info, operation_id="ca_info", roles=r["ca_info"], audit=False,
              summary="The CA's name and certificate (public)", response=CA_INFO)
    add_route(app, "POST", "/ca/requests", submit, operation_id="submit", roles=r["submit"],
              summary="Submit a PKCS#10 request; answers the request's disposition (and certificate if issued)",
              description="The requester recorded is the authenticated caller. Its roles decide the templates "
                          "it may use (403 CERTSRV_E_TEMPLATE_DENIED; a CA template never to an Enrollee and "
                          "never at once) and whether it may have a role grant's subject (403 E_ACCESSDENIED); "
                          "a bad name is 400 CERTSRV_E_BAD_REQUESTSUBJECT naming it.",
              body=SUBMIT_BODY, response=REQUEST_INFO)
    add_route(app, "GET", "/ca/requests", view, operation_id="view", roles=r["view"],
              summary="View requests and certificates with filters and paging", parameters=VIEW_PARAMS,
              response=REQUEST_LIST, audit=True)
    add_route(app, "GET", "/ca/requests/{request_id}", get_request, operation_id="get_request",
              roles=r["get_request"], summary="A request's state (pending, issued ...), with its certificate",
              description=OWN, parameters=[P_REQUEST_ID], response=REQUEST_INFO)
    add_route(app, "GET", "/ca/requests/{request_id}/certificate", get_request_certificate,
              operation_id="get_request_certificate", roles=r["get_request_certificate"],
              summary="The certificate issued for a request", description=OWN, parameters=[P_REQUEST_ID],
              response=CERT_BODY)
    for name, text in (("issue", "Issue a pending request"), ("deny", "Deny a pending request"),
                       ("resubmit", "Resubmit a request to the policy")):
        add_route(app, "POST", f"/ca/requests/{{request_id}}/{name}", _resolver(name), operation_id=name,
                  roles=r[name], summary=text, parameters=[P_REQUEST_ID], response=REQUEST_INFO)
    add_route(app, "GET", "/ca/certificates/{serial}", get_certificate, operation_id="get_certificate",
              roles=r["get_certificate"], summary="A certificate by serial number (hex)", description=OWN,
              parameters=[P_SERIAL], response=CERT_BODY)
    add_route(app, "POST", "/ca/certificates/{serial}/revoke", revoke, operation_id="revoke", roles=r["revoke"],
              summary="Revoke a certificate", parameters=[P_SERIAL], body=REVOKE_BODY, response=REQUEST_INFO)
    add_route(app, "POST", "/ca/certificates/{serial}/unrevoke", unrevoke, operation_id="unrevoke",
              roles=r["unrevoke"], summary="Unrevoke a certificate on hold (certificateHold)",
              parameters=[P_SERIAL], response=REQUEST_INFO)
    add_route(app, "POST", "/ca/crl", publish_crl, operation_id="publish_crl", roles=r["publish_crl"],
              summary="Publish a new CRL now", response=CRL_INFO)

