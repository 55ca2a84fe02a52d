"""``GET /ca/crl``: the CA's newest CRL, as the database holds it (issue 14: a standby node serves CRL fetches
too; the published files live in the writer's home, the CRL row in the shared database).

A CRL is public (RFC 5280 §5: relying parties fetch it anonymously), so no role is needed, like ``GET /ca``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import CRYPT_E_NOT_FOUND, NotFound
from . import auth
from .middleware import json_response
from .openapi import add_route


def newest_crl(store: Any) -> dict[str, Any]:
    """The newest CRL row as ``{number, this_update, next_update, entries, crl_pem}``; NotFound before the first."""
    number = store.max_value("crl", "number")
    rows = store.select("crl", [("number", "=", number)], limit=1) if number is not None else []
    if not rows:
        raise NotFound(CRYPT_E_NOT_FOUND, "crl", "no CRL has been published yet (certsrv crl publish)")
    r = rows[0]
    pem = x509.load_der_x509_crl(bytes(r["raw"])).public_bytes(serialization.Encoding.PEM).decode()
    return {"number": int(r["number"]), "this_update": r["this_update"], "next_update": r["next_update"],
            "entries": r["entries"], "crl_pem": pem}


async def get_crl(request: web.Request) -> web.Response:
    """The newest CRL (PEM) and its number and dates."""
    return json_response(await asyncio.to_thread(newest_crl, request.app["authority"].store))


CRL_SCHEMA = {
    "type": "object",
    "required": ["number", "crl_pem"],
    "properties": {"number": {"type": "integer"}, "this_update": {"type": ["string", "null"]},
                   "next_update": {"type": ["string", "null"]}, "entries": {"type": ["integer", "null"]},
                   "crl_pem": {"type": "string"}},
}


def setup_routes(app: web.Application) -> None:
    """Register ``GET /ca/crl``."""
    add_route(app, "GET", "/ca/crl", get_crl, operation_id="get_crl", roles=auth.OPERATION_ROLES["ca_info"],
              summary="The newest CRL (PEM, number, thisUpdate, nextUpdate), read from the database",
              description="Public, as the CRL itself. Served by every node, writer or standby (issue 14). "
                          "404 CRYPT_E_NOT_FOUND before the first CRL.", audit=False, response=CRL_SCHEMA)
