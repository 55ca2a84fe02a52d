"""A new request up to the point of writing it: parse, check against policy and rights, decide, sign.

:func:`prepare_submission` is pure (it reads no database and writes nothing), so it can run anywhere the
CA key is: in the Authority's own thread, or in a worker process of the service (issue 15: the crypto of
many requests on every core, one writer owning the store). Its result, :class:`PreparedRequest`, holds the
request row (without its id), the attributes and the extension rows: everything the writer needs to
commit it, and nothing it must decide again (replay never re-signs or re-decides, DESIGN "Redo log").

The serial it signs with is random and *not yet checked unused*: the writer checks it against the
database and the issuances in flight before committing (:meth:`Authority.commit_prepared`), and a
collision (about 2^-95 per pair) is answered by preparing again with a new serial.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ..config import Config
from ..errors import CERTSRV_E_INVALID_CA_CERTIFICATE, ERROR_ALREADY_EXISTS, Conflict
from ..requestkey import REQUEST_KEY, checked_key
from ..store.schema import DISP_ISSUED, DISP_PENDING
from .issuance import IssuedCertificate, Issuer, random_serial
from .models import MSG_ISSUED, MSG_PENDING, serial_hex, utcnow_iso
from .policy import choose_template, decide_pending, merge_attributes, parse_request
from .rights import admit
from .templates import Template

# A taken serial is ~2^-95 likely: preparing again this many times and still colliding means something else
# is wrong (Authority.submit and the service's workers both stop there).
SERIAL_TRIES = 8


def no_unused_serial() -> Conflict:
    """The refusal after :data:`SERIAL_TRIES` collisions."""
    return Conflict(ERROR_ALREADY_EXISTS, "submit", f"no unused serial after {SERIAL_TRIES} tries; retry")



@dataclass
class PreparedRequest:
    """A checked (and, unless pending, signed) new request, ready to be committed. Picklable: a worker
    process sends it to the writer.

    :param row: the ``request`` row without ``request_id``.
    :param attributes: the ``attribute`` rows (name: value).
    :param extensions: the ``extension`` rows (oid, flags, DER) of the signed certificate; None when pending.
    :param serial: the serial's database text (None when pending).
    """

    row: dict[str, Any]
    attributes: dict[str, str]
    extensions: list[tuple[str, int, bytes]] | None = field(default=None, repr=False)
    serial: str | None = None

    @property
    def template(self) -> str:
        """The template's name."""
        return str(self.row.get("template") or "")


def cert_columns(issued: IssuedCertificate, serial_text: str) -> dict[str, Any]:
    """The certificate columns of a request row, from what was signed (no re-parse)."""
    return {
        "serial": serial_text,
        "raw_cert": issued.der,
        "not_before": issued.not_before_iso,
        "not_after": issued.not_after_iso,
        "subject": issued.subject,
        "thumbprint": hashlib.sha256(issued.der).hexdigest(),
        "revoked_at": None,
        "revocation_reason": None,
        "invalidity_date": None,
    }


def prepare_submission(cfg: Config, templates: dict[str, Template], issuer: Issuer | None,
                       ca_cert: x509.Certificate | None, csr: bytes, *, requester: str, template: str | None,
                       attributes: Mapping[str, str] | None, roles: frozenset[str],
                       request_path: str = "the CA's request") -> PreparedRequest:
    """Everything :meth:`Authority.submit` does before writing (see there for the checks, in order).

    :param cfg: the home's configuration.
    :param templates: the home's templates.
    :param issuer: the CA's signer (None while a subordinate CA waits for its certificate).
    :param ca_cert: the CA certificate (None likewise).
    :param csr: the request (PEM or DER).
    :param requester: who submits it.
    :param template: the template asked for, if any.
    :param attributes: extra request attributes.
    :param roles: the caller's roles.
    :param request_path: a subordinate CA's own request (named when its certificate is missing).
    :raises InvalidArgument, AccessDenied, Conflict: the refusal, one line; nothing was written.
    """
    req = parse_request(csr, cfg.policy.max_request_bytes)
    attrs = merge_attributes(req, attributes)
    # Issue 14: the request key is the submitter's alone (never one a CSR carries), checked wherever this runs.
    attrs.pop(REQUEST_KEY, None)
    if attributes and REQUEST_KEY in attributes:
        attrs[REQUEST_KEY] = checked_key(attributes[REQUEST_KEY])
    tmpl = choose_template(cfg.policy, template, attrs, templates)
    names = admit(cfg, req, tmpl, roles, requester or "this caller", ca_cert)
    now, now_text = utcnow_iso()
    row: dict[str, Any] = {
        "status_code": 0,
        "submitted_at": now_text,
        "requester": requester,
        "raw_request": req.der,
        "request_subject": req.subject,
        "template": tmpl.name,
    }
    if decide_pending(cfg.policy, tmpl):
        row.update(disposition=DISP_PENDING, disposition_message=MSG_PENDING)
        return PreparedRequest(row, attrs)
    if issuer is None:
        raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, cfg.ca.name,
                       f"CA certificate is not installed yet: have {request_path} signed by the parent CA "
                       "and run certsrv install-cert")
    serial = random_serial()
    text = serial_hex(serial)
    issued = issuer.build(req, tmpl, serial, now, names)
    row.update(disposition=DISP_ISSUED, disposition_message=MSG_ISSUED, resolved_at=now_text,
               **cert_columns(issued, text))
    return PreparedRequest(row, attrs, issued.extensions, text)


__all__ = ["PreparedRequest", "cert_columns", "prepare_submission"]
