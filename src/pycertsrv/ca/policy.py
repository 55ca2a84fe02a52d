"""Request intake and policy: sniff PEM/DER, parse PKCS#10, check its signature and key, pull out the
attributes and the SAN of its extension request, choose the template, decide issue or pending."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AttributeOID

from ..config import PolicySection
from ..errors import (
    CERTSRV_E_BAD_REQUESTSUBJECT,
    E_INVALIDARG,
    ERROR_INVALID_DATA,
    NTE_BAD_ALGID,
    NTE_BAD_SIGNATURE,
    InvalidArgument,
)
from .keys import check_request_key
from .templates import Template, get_template

_PEM = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----(.*?)-----END (NEW )?CERTIFICATE REQUEST-----", re.S)
_B64 = re.compile(rb"^[A-Za-z0-9+/=\s]+$")
# ASN.1 string tags whose attribute value is text (X.680): UTF8, Printable, T61, IA5, BMP.
_TEXT_TAGS = {12: "utf-8", 19: "ascii", 20: "latin-1", 22: "ascii", 30: "utf-16-be"}
# Attributes never stored: the challenge password is a secret (RFC 2985 §5.4.1); the extension request
# is kept as the request itself and copied into the certificate's extensions where policy allows.
_SKIPPED = {AttributeOID.CHALLENGE_PASSWORD, x509.ObjectIdentifier("1.2.840.113549.1.9.14")}
_ATTRIBUTE_NAMES = {
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.3.6.1.4.1.311.13.2.3": "OSVersion",
    "1.3.6.1.4.1.311.21.20": "ClientInformation",
}
TEMPLATE_ATTRIBUTE = "CertificateTemplate"
MAX_ATTRIBUTE_VALUE = 4096


@dataclass(frozen=True)
class ParsedRequest:
    """A checked PKCS#10 request."""

    der: bytes = field(repr=False)
    csr: x509.CertificateSigningRequest = field(repr=False)
    subject: str
    subject_name: x509.Name = field(repr=False)  # csr.subject builds a new Name on every access: kept once
    public_key: CertificatePublicKeyTypes = field(repr=False)
    san: x509.Extension[x509.SubjectAlternativeName] | None
    attributes: dict[str, str]


def decode_request(data: bytes, max_bytes: int) -> bytes:
    """The DER bytes of a request given as PEM (``CERTIFICATE REQUEST`` or ``NEW ...``), bare base64 or DER.

    :param data: what the requester sent.
    :param max_bytes: refuse input longer than this (policy.max_request_bytes, 64 KiB by default).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument(E_INVALIDARG, "submit", f"request must be bytes, not {type(data).__name__}")
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > max_bytes:
        raise InvalidArgument(E_INVALIDARG, "submit",
                              f"request is {len(data)} bytes, over the {max_bytes}-byte limit")
    if data[:1] == b"\x30":  # DER SEQUENCE (never blank: checked first, without copying the request to strip it)
        return data
    stripped = data.strip()
    if not stripped:
        raise InvalidArgument(ERROR_INVALID_DATA, "submit", "request is empty")
    if stripped.startswith(b"-----BEGIN"):
        m = _PEM.search(stripped)
        if m is None:
            raise InvalidArgument(ERROR_INVALID_DATA, "submit", "PEM input holds no CERTIFICATE REQUEST block")
        body = m.group(2)
    elif _B64.match(stripped):
        body = stripped  # certreq writes bare base64 too
    else:
        raise InvalidArgument(ERROR_INVALID_DATA, "submit",
                              f"request ({len(data)} bytes) is neither PEM, base64 nor DER")
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(ERROR_INVALID_DATA, "submit", "request is not valid base64") from None


def _attribute_value(value: bytes, tag: int | None) -> str:
    enc = _TEXT_TAGS.get(tag or -1)
    if enc is not None:
        try:
            return value.decode(enc)[:MAX_ATTRIBUTE_VALUE]
        except UnicodeDecodeError:
            pass
    return value.hex()[:MAX_ATTRIBUTE_VALUE]


def parse_request(data: bytes, max_bytes: int = 65536) -> ParsedRequest:
    """Decode, parse and check a PKCS#10 request; every refusal is a one-line error and stores nothing.

    :param data: PEM or DER (sniffed).
    :param max_bytes: input size limit.
    """
    der = decode_request(data, max_bytes)
    try:
        csr = x509.load_der_x509_csr(der)
        subject_name = csr.subject
        subject = subject_name.rfc4514_string()
    except ValueError as e:
        raise InvalidArgument(ERROR_INVALID_DATA, "submit", f"not a PKCS #10 certificate request: {e}") from None
    who = f"request for {subject!r}" if subject else "request with empty subject"
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InvalidArgument(NTE_BAD_ALGID, "submit", f"{who}: unsupported public key: {e}") from None
    check_request_key(key, "submit")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InvalidArgument(NTE_BAD_ALGID, "submit", f"{who}: unsupported signature algorithm: {e}") from None
    if not valid:
        # The requester must prove possession of the key (RFC 2986 §3).
        raise InvalidArgument(NTE_BAD_SIGNATURE, "submit", f"{who}: signature does not verify with its own key")
    try:
        exts = csr.extensions
        san = exts.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        san = None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise InvalidArgument(ERROR_INVALID_DATA, "submit", f"{who}: bad extension request: {e}") from None
    if not subject and san is None:
        raise InvalidArgument(CERTSRV_E_BAD_REQUESTSUBJECT, "submit",
                              "request has an empty subject and no subjectAltName (RFC 5280 §4.1.2.6)")
    attributes: dict[str, str] = {}
    try:
        for attr in csr.attributes:
            if attr.oid in _SKIPPED:
                continue
            name = _ATTRIBUTE_NAMES.get(attr.oid.dotted_string, attr.oid.dotted_string)
            attributes[name] = _attribute_value(attr.value, getattr(attr, "_type", None))
    except ValueError as e:
        raise InvalidArgument(ERROR_INVALID_DATA, "submit", f"{who}: bad attributes: {e}") from None
    return ParsedRequest(der, csr, subject, subject_name, key, san, attributes)


def merge_attributes(parsed: ParsedRequest, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The request's attributes plus the submitter's ``name: value`` pairs (the submitter's win)."""
    out = dict(parsed.attributes)
    for k, v in (extra or {}).items():
        name = str(k).strip()
        if not name or len(name) > 256:
            raise InvalidArgument(E_INVALIDARG, "submit", f"bad attribute name {k!r}")
        out[name] = str(v)[:MAX_ATTRIBUTE_VALUE]
    return out


def choose_template(policy: PolicySection, explicit: str | None, attributes: Mapping[str, str],
                    templates: dict[str, Template] | None = None) -> Template:
    """Explicit template, else the ``CertificateTemplate`` attribute, else the configured default.

    Whichever way it is named, the same template object (and so the same rights) results.

    :param templates: the home's templates (default: the built-in five).
    """
    name = explicit or attributes.get(TEMPLATE_ATTRIBUTE) or policy.default_template
    return get_template(name, templates)


def decide_pending(policy: PolicySection, template: Template | None = None) -> bool:
    """Whether a new request waits for an officer instead of being issued: policy.mode = "pending", the
    template's ``issue = "pending"``, or a CA template (never issued at once)."""
    if template is not None:
        return template.waits_for_officer(policy)
    return policy.mode == "pending"


__all__ = [
    "TEMPLATE_ATTRIBUTE",
    "ParsedRequest",
    "choose_template",
    "decide_pending",
    "decode_request",
    "merge_attributes",
    "parse_request",
]
