"""Revocation rules: which transitions are allowed, and the CRL entry a revoked row becomes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509

from ..errors import CERTSRV_E_BAD_REQUESTSTATUS, E_INVALIDARG, Conflict, InvalidArgument
from ..store.schema import DISP_ISSUED, DISP_REVOKED
from .models import CERTIFICATE_HOLD, DISPOSITION_NAMES, REASON_NAMES, REMOVE_FROM_CRL, parse_iso, parse_reason

_REASON_FLAGS: dict[int, x509.ReasonFlags] = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def revocation_reason(value: str | int) -> int:
    """The reason code for a revocation; removeFromCRL is for delta CRLs only (use unrevoke)."""
    code = parse_reason(value)
    if code == REMOVE_FROM_CRL:
        raise InvalidArgument(E_INVALIDARG, "revocation reason",
                              "removeFromCRL only appears on delta CRLs (RFC 5280 §5.3.1); use unrevoke to lift a hold")
    return code


def check_invalidity_date(value: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """The invalidity date as aware UTC; it may not lie in the future (RFC 5280 §5.3.2: when the key
    was known or suspected to be compromised)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC).replace(microsecond=0)
    if value > now:
        raise InvalidArgument(E_INVALIDARG, "invalidity date",
                              f"{value:%Y-%m-%dT%H:%M:%SZ} is in the future")
    return value


def check_revocable(row: dict[str, Any], serial: str, reason: int) -> None:
    """Refuse revoking a row that is not issued, or already revoked (except hold -> a final reason)."""
    disp = int(row["disposition"])
    if disp == DISP_ISSUED:
        return
    if disp == DISP_REVOKED:
        current = row.get("revocation_reason")
        if current == CERTIFICATE_HOLD and reason != CERTIFICATE_HOLD:
            return  # a held certificate may be revoked for good (RFC 5280 §5.3.1)
        name = REASON_NAMES.get(int(current), str(current)) if current is not None else "unknown"
        raise Conflict(CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}",
                       f"certificate is already revoked ({name}) since {row.get('revoked_at')}")
    raise Conflict(CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}",
                   f"certificate is not issued (request is {DISPOSITION_NAMES.get(disp, disp)})")


def check_unrevocable(row: dict[str, Any], serial: str) -> None:
    """Only a certificate on hold (certificateHold) can be reinstated."""
    if int(row["disposition"]) != DISP_REVOKED or row.get("revocation_reason") != CERTIFICATE_HOLD:
        disp = int(row["disposition"])
        state = DISPOSITION_NAMES.get(disp, str(disp))
        if disp == DISP_REVOKED:
            state += f" ({REASON_NAMES.get(int(row['revocation_reason']), '?')})"
        raise Conflict(CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}",
                       f"only a certificate on hold (certificateHold) can be unrevoked; it is {state}")


def crl_entry(row: dict[str, Any]) -> x509.RevokedCertificate:
    """The CRL entry for a revoked row: serial, revocation date, reason code, invalidity date."""
    revoked_at = parse_iso(str(row["revoked_at"]))
    assert revoked_at is not None
    b = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(str(row["serial"]), 16))
        .revocation_date(revoked_at)
    )
    reason = row.get("revocation_reason")
    # RFC 5280 §5.3.1: the reasonCode SHOULD be absent rather than carrying unspecified (0).
    if reason is not None and int(reason) != 0:
        b = b.add_extension(x509.CRLReason(_REASON_FLAGS[int(reason)]), critical=False)
    inv = parse_iso(row.get("invalidity_date"))
    if inv is not None:
        b = b.add_extension(x509.InvalidityDate(inv), critical=False)
    return b.build()
