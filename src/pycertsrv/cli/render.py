"""Text rendering of CA results for the ``certsrv`` verbs (tables, one-line summaries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..ca import CRLInfo, RequestInfo


def request_line(info: RequestInfo) -> str:
    """One line: request id, disposition, and the certificate's serial or the status."""
    parts = [f"request {info.request_id}: {info.disposition_name}"]
    if info.serial:
        parts.append(f"serial {info.serial}")
    if info.subject or info.request_subject:
        parts.append(f"subject {info.subject or info.request_subject}")
    if info.revocation_reason_name:
        parts.append(f"reason {info.revocation_reason_name}")
    if info.status_code:
        parts.append(f"status 0x{info.status_code & 0xFFFFFFFF:08X}")
    parts.append(f"({info.message})")
    return ", ".join(parts[:-1]) + " " + parts[-1]


def crl_line(info: CRLInfo) -> str:
    """One line describing a published CRL."""
    return (f"CRL {info.number} published: {info.entries} entries, thisUpdate {info.this_update}, "
            f"nextUpdate {info.next_update}, files {info.der_path} and {info.pem_path}")


def request_table(rows: Sequence[RequestInfo]) -> str:
    """A fixed-width table of requests and certificates."""
    header = ("ID", "DISPOSITION", "SERIAL", "SUBJECT", "NOT AFTER", "REVOKED")
    body = []
    for r in rows:
        revoked = f"{r.revoked_at} {r.revocation_reason_name}" if r.revoked_at else ""
        body.append((str(r.request_id), r.disposition_name, r.serial or "", r.subject or r.request_subject or "",
                      r.not_after or "", revoked))
    if not body:
        return "no matching requests"
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)
