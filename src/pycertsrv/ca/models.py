"""Value types of the CA: request rows as :class:`RequestInfo`, CRLs as :class:`CRLInfo`, and the
canonical forms (serial numbers, ISO 8601 times, disposition names) used in the database."""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import E_INVALIDARG, InvalidArgument
from ..store.schema import DISP_DENIED, DISP_ERROR, DISP_ISSUED, DISP_PENDING, DISP_REVOKED

# AD CS dispositions (certview.h DB_DISP_*) and the names we show and accept.
DISPOSITION_NAMES: dict[int, str] = {
    DISP_PENDING: "pending",
    DISP_ISSUED: "issued",
    DISP_REVOKED: "revoked",
    DISP_ERROR: "error",
    DISP_DENIED: "denied",
}

# AD CS disposition messages (the Request.DispositionMessage column).
MSG_PENDING = "Taken Under Submission"
MSG_ISSUED = "Issued"

# RFC 5280 §5.3.1 CRLReason codes; 7 is not used.
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REASON_NAMES: dict[int, str] = {v: k for k, v in REASON_CODES.items()}
CERTIFICATE_HOLD = 6
REMOVE_FROM_CRL = 8

_ISO = "%Y-%m-%dT%H:%M:%SZ"
_HEX = re.compile(r"^[0-9a-f]+$")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC, whole seconds (what X.509 times can carry)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


_NOW: tuple[dt.datetime, str] = (dt.datetime.min.replace(tzinfo=dt.UTC), "")


def utcnow_iso() -> tuple[dt.datetime, str]:
    """:func:`utcnow` and its :func:`iso` string; the string is formatted once per second (issuance calls
    this for every request)."""
    global _NOW
    now = utcnow()
    last = _NOW
    if last[0] == now:
        return last
    cur = _NOW = (now, iso(now) or "")  # one tuple: other threads see this pair or the previous one
    return cur


def iso(t: dt.datetime | None) -> str | None:
    """A time as the database's ISO 8601 UTC string ``YYYY-MM-DDTHH:MM:SSZ`` (sorts as text)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).strftime(_ISO)


def parse_iso(s: str | None) -> dt.datetime | None:
    """The inverse of :func:`iso`."""
    if s is None:
        return None
    return dt.datetime.strptime(s, _ISO).replace(tzinfo=dt.UTC)


def serial_hex(n: int) -> str:
    """Canonical serial form: uppercase hex in whole octets, no separators (as openssl and certutil print it)."""
    h = f"{n:X}"
    return h if len(h) % 2 == 0 else "0" + h


def normalize_serial(value: str | int) -> str:
    """Canonical form of a serial given as an int or hex text in any case, with optional colons/spaces/0x.

    :param value: ``0a:1b``, ``0A1B``, ``0x0a1b`` or ``2587``-as-int.
    """
    if isinstance(value, bool):
        raise InvalidArgument(E_INVALIDARG, "serial", f"not a serial number: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidArgument(E_INVALIDARG, "serial", f"serial must be positive, got {value}")
        return serial_hex(value)
    text = str(value).strip().lower().replace(":", "").replace(" ", "")
    if text.startswith("0x"):
        text = text[2:]
    if not text or not _HEX.match(text) or len(text) > 64:
        raise InvalidArgument(E_INVALIDARG, "serial", f"not a hexadecimal serial number: {value!r}")
    n = int(text, 16)
    if n == 0:
        raise InvalidArgument(E_INVALIDARG, "serial", "serial 0 is not valid (RFC 5280 §4.1.2.2)")
    return serial_hex(n)


def parse_disposition(value: str | int) -> int:
    """A disposition given as its AD CS number or name (``pending``, ``issued``, ...)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in DISPOSITION_NAMES:
            return value
    else:
        text = str(value).strip().lower()
        if text.isdigit() and int(text) in DISPOSITION_NAMES:
            return int(text)
        for code, name in DISPOSITION_NAMES.items():
            if name == text:
                return code
    names = ", ".join(DISPOSITION_NAMES.values())
    raise InvalidArgument(E_INVALIDARG, "disposition", f"unknown disposition {value!r} (one of {names})")


def parse_reason(value: str | int) -> int:
    """An RFC 5280 revocation reason given as its code or name (any case, ``-``/``_`` ignored).

    :param value: e.g. ``keyCompromise``, ``key-compromise``, ``1``.
    """
    code: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        code = value
    else:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            code = int(text)
        else:
            key = text.replace("-", "").replace("_", "").lower()
            for name, c in REASON_CODES.items():
                if name.lower() == key:
                    code = c
                    break
    if code == 7:
        raise InvalidArgument(E_INVALIDARG, "revocation reason", "reason code 7 is not used (RFC 5280 §5.3.1)")
    if code is None or code not in REASON_NAMES:
        names = ", ".join(REASON_CODES)
        raise InvalidArgument(E_INVALIDARG, "revocation reason", f"unknown reason {value!r} (one of {names})")
    return code


@dataclass(frozen=True)
class RequestInfo:
    """One row of the request table (a request and, once issued, its certificate)."""

    request_id: int
    disposition: int
    status_code: int
    message: str
    requester: str
    submitted_at: str
    resolved_at: str | None = None
    request_subject: str | None = None
    template: str | None = None
    serial: str | None = None
    subject: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    thumbprint: str | None = None
    revoked_at: str | None = None
    revocation_reason: int | None = None
    invalidity_date: str | None = None
    certificate_der: bytes | None = field(default=None, repr=False)
    request_der: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RequestInfo:
        """Build from a ``request`` table row."""
        return cls(
            request_id=int(row["request_id"]),
            disposition=int(row["disposition"]),
            status_code=int(row.get("status_code") or 0),
            message=row.get("disposition_message") or "",
            requester=row.get("requester") or "",
            submitted_at=row.get("submitted_at") or "",
            resolved_at=row.get("resolved_at"),
            request_subject=row.get("request_subject"),
            template=row.get("template"),
            serial=row.get("serial"),
            subject=row.get("subject"),
            not_before=row.get("not_before"),
            not_after=row.get("not_after"),
            thumbprint=row.get("thumbprint"),
            revoked_at=row.get("revoked_at"),
            revocation_reason=row.get("revocation_reason"),
            invalidity_date=row.get("invalidity_date"),
            certificate_der=bytes(row["raw_cert"]) if row.get("raw_cert") is not None else None,
            request_der=bytes(row["raw_request"]) if row.get("raw_request") is not None else None,
        )

    @property
    def disposition_name(self) -> str:
        """``pending``, ``issued``, ``revoked``, ``error`` or ``denied``."""
        return DISPOSITION_NAMES.get(self.disposition, str(self.disposition))

    @property
    def revocation_reason_name(self) -> str | None:
        """The RFC 5280 name of the revocation reason, if revoked."""
        return None if self.revocation_reason is None else REASON_NAMES.get(self.revocation_reason)

    @property
    def certificate(self) -> x509.Certificate | None:
        """The issued certificate, parsed."""
        return None if self.certificate_der is None else x509.load_der_x509_certificate(self.certificate_der)

    @property
    def certificate_pem(self) -> str | None:
        """The issued certificate as PEM text (RFC 7468 §2: base64 of the stored DER in 64-column lines; the
        same text ``public_bytes(PEM)`` gives, without parsing the certificate for every answer)."""
        der = self.certificate_der
        if der is None:
            return None
        b64 = base64.b64encode(der).decode("ascii")
        body = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Whether the certificate's notAfter has passed."""
        end = parse_iso(self.not_after)
        return end is not None and end < (now or utcnow())

    def to_json(self) -> dict[str, Any]:
        """The row as JSON (contract field names; times ISO 8601 UTC)."""
        return {
            "request_id": self.request_id,
            "disposition": self.disposition,
            "disposition_name": self.disposition_name,
            "status_code": self.status_code,
            "status_hex": f"0x{self.status_code & 0xFFFFFFFF:08X}",
            "message": self.message,
            "requester": self.requester,
            "submitted_at": self.submitted_at,
            "resolved_at": self.resolved_at,
            "request_subject": self.request_subject,
            "template": self.template,
            "serial": self.serial,
            "subject": self.subject,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "thumbprint": self.thumbprint,
            "revoked_at": self.revoked_at,
            "revocation_reason": self.revocation_reason,
            "revocation_reason_name": self.revocation_reason_name,
            "invalidity_date": self.invalidity_date,
            "certificate_pem": self.certificate_pem,
        }


@dataclass(frozen=True)
class CRLInfo:
    """A published CRL: its number, times, entry count, DER bytes and the files written."""

    number: int
    this_update: str
    next_update: str
    entries: int
    der: bytes = field(repr=False)
    der_path: Path | None = None
    pem_path: Path | None = None

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The CRL, parsed."""
        return x509.load_der_x509_crl(self.der)

    def to_json(self) -> dict[str, Any]:
        """The CRL as JSON."""
        return {
            "number": self.number,
            "this_update": self.this_update,
            "next_update": self.next_update,
            "entries": self.entries,
            "der_path": str(self.der_path) if self.der_path else None,
            "pem_path": str(self.pem_path) if self.pem_path else None,
            "crl_pem": self.crl.public_bytes(Encoding.PEM).decode("ascii"),
        }
