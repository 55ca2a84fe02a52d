"""The certificate authority: keys, request policy, issuance, deny/resubmit, revocation, CRLs and the
published ("dynamic") files. :class:`Authority` is the whole API; the CLI and the service call it."""

from __future__ import annotations

from .authority import CA_REQUEST_FILE, Authority
from .keys import KEY_TYPES, resolve_passphrase
from .models import (
    DISPOSITION_NAMES,
    REASON_CODES,
    REASON_NAMES,
    CRLInfo,
    RequestInfo,
    normalize_serial,
    parse_disposition,
    parse_reason,
)
from .templates import TEMPLATES

__all__ = [
    "CA_REQUEST_FILE",
    "DISPOSITION_NAMES",
    "KEY_TYPES",
    "REASON_CODES",
    "REASON_NAMES",
    "TEMPLATES",
    "Authority",
    "CRLInfo",
    "RequestInfo",
    "normalize_serial",
    "parse_disposition",
    "parse_reason",
    "resolve_passphrase",
]
