"""Building certificates: the self-signed root, the subordinate CA's own request, and end-entity or
subordinate certificates from a checked request, a template and the policy configuration."""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from ..config import PolicySection
from ..errors import CERTSRV_E_INVALID_CA_CERTIFICATE, E_INVALIDARG, Conflict, InvalidArgument
from .keys import CAPrivateKey, signing_hash
from .models import iso
from .names import NamePlan
from .policy import ParsedRequest
from .templates import Template

# AD CS backdates notBefore by its clock-skew allowance (ClockSkewMinutes, 10 by default).
CLOCK_SKEW = dt.timedelta(minutes=10)
SERIAL_BITS = 159  # RFC 5280 §4.1.2.2: at most 20 octets; 159 bits keeps the DER INTEGER positive


class _RandomPool:
    """Bytes of the operating system's CSPRNG (``os.urandom``), read 4 KiB at a time.

    One ``getrandom`` call per issuance lets go of the GIL and hands it to another issuer thread, which costs
    far more than the call (issue 15: measured as CPU per issuance with 16 threads); one per 200 serials does
    not. Every byte is used once. A forked child starts with an empty pool (never its parent's bytes).
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + n > len(self._buf):
                self._buf, pos = os.urandom(max(self.SIZE, n)), 0
            self._pos = pos + n
            return self._buf[pos:pos + n]

    def forget(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held by another thread at fork
        self._buf, self._pos = b"", 0


_POOL = _RandomPool()
os.register_at_fork(after_in_child=_POOL.forget)
_SERIAL_BYTES = (SERIAL_BITS + 7) // 8


def random_serial() -> int:
    """A random positive serial of at most 159 bits (CA/B Forum BR §7.1: ≥ 64 bits of CSPRNG output), drawn as
    ``secrets.randbits(159)`` draws it: 20 bytes of ``os.urandom``, the lowest bit dropped."""
    while True:
        n = int.from_bytes(_POOL.take(_SERIAL_BYTES)) >> (_SERIAL_BYTES * 8 - SERIAL_BITS)
        if n >= 1 << 64:
            return n


def ca_name(name: str) -> x509.Name:
    """The CA's distinguished name: ``CN=<name>``."""
    if not name.strip():
        raise InvalidArgument(E_INVALIDARG, "init", "CA name must not be empty")
    if len(name) > 64:  # RFC 5280 Appendix A ub-common-name
        raise InvalidArgument(E_INVALIDARG, "init", f"CA name is {len(name)} characters; at most 64 fit in a CN")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _ca_extensions(builder: x509.CertificateBuilder, public_key: CertificatePublicKeyTypes,
                   path_length: int | None) -> x509.CertificateBuilder:
    # RFC 5280 §4.2.1.9 basicConstraints critical in CA certificates; §4.2.1.3 keyCertSign + cRLSign.
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def self_signed_root(key: CAPrivateKey, name: str, days: int, now: dt.datetime) -> x509.Certificate:
    """The root CA certificate: basicConstraints cA critical, keyUsage keyCertSign|cRLSign, SKI, AKI.

    :param key: the CA key.
    :param name: the CA name (CN).
    :param days: validity in days from ``now``.
    :param now: notBefore.
    """
    subject = ca_name(name)
    pub = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
    )
    builder = _ca_extensions(builder, pub, None)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    return builder.sign(key, signing_hash(key))


def subordinate_request(key: CAPrivateKey, name: str) -> x509.CertificateSigningRequest:
    """The subordinate CA's PKCS#10 request to its parent (asks for CA basicConstraints and CA keyUsage)."""
    pub = key.public_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(ca_name(name))
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    return builder.sign(key, signing_hash(key))


def authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI for certificates this CA signs: the CA's own SKI (RFC 5280 §4.2.1.1), else one computed from its key."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]


class Issuer:
    """Signs certificates for one CA; the per-CA parts (AKI, CDP, AIA, hash) are computed once.

    :param key: the CA private key.
    :param cert: the CA certificate.
    :param policy: the ``[policy]`` configuration.
    """

    def __init__(self, key: CAPrivateKey, cert: x509.Certificate, policy: PolicySection) -> None:
        self.key = key
        self.cert = cert
        self.policy = policy
        self.hash = signing_hash(key)
        self.issuer_name = cert.subject  # cert.subject builds a new Name on every access
        self.aki = authority_key_identifier(cert)
        self.cdp: x509.CRLDistributionPoints | None = None
        if policy.crl_distribution_points:
            self.cdp = x509.CRLDistributionPoints([
                x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in policy.crl_distribution_points],
                                       None, None, None)
            ])
        access = [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(u))
                  for u in policy.aia_ca_issuers]
        access += [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u))
                   for u in policy.aia_ocsp]
        self.aia = x509.AuthorityInformationAccess(access) if access else None
        # One dict holding both forms, so a thread never sees the extensions of a template without its rows.
        self._fixed_cache: dict[tuple[str, bool], _Fixed] = {}
        self._times: tuple[dt.datetime, int, dt.datetime, dt.datetime, str, str] | None = None

    def validity_days(self, template: Template | None) -> int:
        """The validity of a certificate of ``template``: policy.validity_days, capped by the template."""
        days = self.policy.validity_days
        return min(days, template.max_validity_days) if template is not None else days

    def validity(self, now: dt.datetime, days: int | None = None) -> tuple[dt.datetime, dt.datetime]:
        """notBefore (backdated by the clock skew, not before the CA's) and notAfter (never past the CA's).

        The period counts from notBefore and includes both ends (RFC 5280 §4.1.2.5), so ``days`` days
        end one second before notBefore + days: a 200-day template never yields 200 days and a second
        (CA/B Forum BR §6.3.2 counts the same way).
        """
        ca_start = self.cert.not_valid_before_utc
        ca_end = self.cert.not_valid_after_utc
        if now >= ca_end:
            raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, "issue",
                           f"the CA certificate expired at {ca_end:%Y-%m-%dT%H:%M:%SZ}")
        start = max(now - CLOCK_SKEW, ca_start)
        span = dt.timedelta(days=self.policy.validity_days if days is None else days) - dt.timedelta(seconds=1)
        end = min(start + span, ca_end)
        return start, end

    def _validity_at(self, now: dt.datetime, days: int) -> tuple[dt.datetime, dt.datetime, str, str]:
        """``validity(now, days)`` with its database strings, computed once per second and validity."""
        cached = self._times
        if cached is not None and cached[0] == now and cached[1] == days:
            return cached[2], cached[3], cached[4], cached[5]
        start, end = self.validity(now, days)
        times = (now, days, start, end, iso(start) or "", iso(end) or "")
        self._times = times  # one tuple: readers in other threads see all of it or the previous one
        return start, end, times[4], times[5]

    def _fixed(self, template: Template, rsa_key: bool) -> _Fixed:
        """The extensions that do not depend on the requester's key or names, and their database rows
        (cached per template/key kind)."""
        key = (template.name, rsa_key)
        fixed = self._fixed_cache.get(key)
        if fixed is None:
            exts: list[x509.Extension[x509.ExtensionType]] = [
                x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(
                    ca=template.ca, path_length=template.path_length if template.ca else None)),
                x509.Extension(ExtensionOID.KEY_USAGE, True, template.key_usage(rsa_key)),
                x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, self.aki),
            ]
            if template.eku:
                exts.append(x509.Extension(ExtensionOID.EXTENDED_KEY_USAGE, False,
                                           x509.ExtendedKeyUsage(list(template.eku))))
            if self.cdp is not None:
                exts.append(x509.Extension(ExtensionOID.CRL_DISTRIBUTION_POINTS, False, self.cdp))
            if self.aia is not None:
                exts.append(x509.Extension(ExtensionOID.AUTHORITY_INFORMATION_ACCESS, False, self.aia))
            if template.policies:
                # RFC 5280 §4.2.1.4; CA/B Forum BR §7.1.2.7.9: a TLS subscriber certificate asserts a
                # reserved policy (e.g. 2.23.140.1.2.1, domain validated), configured per template.
                exts.append(x509.Extension(ExtensionOID.CERTIFICATE_POLICIES, False, x509.CertificatePolicies(
                    [x509.PolicyInformation(o, None) for o in template.policies])))
            rows = tuple((e.oid.dotted_string, int(e.critical), e.value.public_bytes()) for e in exts)
            fixed = self._fixed_cache[key] = _Fixed(tuple(exts), rows)
        return fixed

    def build(self, req: ParsedRequest, template: Template, serial: int, now: dt.datetime,
              names: NamePlan | None = None) -> IssuedCertificate:
        """Sign a certificate for ``req``: subject from the request, SKI, AKI, keyUsage/EKU from the template,
        SAN as the name policy accepted it (``names``; default: the extension request's), CDP and AIA from
        configuration, validity capped by the template.

        Returns the certificate with the columns and extension rows the database keeps, computed from what
        was signed (no re-parse).

        :param req: the checked request.
        :param template: the certificate template.
        :param serial: a serial number checked unused.
        :param now: the issuance time (whole seconds, UTC).
        :param names: the checked names (:func:`pycertsrv.ca.names.check_names`).
        """
        start, end, start_iso, end_iso = self._validity_at(now, self.validity_days(template))
        pub = req.public_key
        fixed = self._fixed(template, isinstance(pub, rsa.RSAPublicKey))
        ski = x509.SubjectKeyIdentifier.from_public_key(pub)
        # The extension list goes to the builder's constructor: add_extension() re-checks types and
        # duplicates and copies the builder once per extension, and our list is unique by construction
        # (fixed OIDs, then SKI and SAN, each once).
        exts: list[x509.Extension[x509.ExtensionType]] = [x509.Extension(_SKI, False, ski), *fixed.extensions]
        digest = ski.digest  # RFC 5280 §4.2.1.2: KeyIdentifier ::= OCTET STRING; its DER, without encoding it in Rust
        ext_rows = [(_SKI_DOTTED, 0, b"\x04" + bytes((len(digest),)) + digest), *fixed.rows]
        if names is None and req.san is not None:
            names = NamePlan(req.san.value, req.san.critical)
        if names is not None and names.san is not None:
            # RFC 5280 §4.2.1.6: SAN must be critical when the subject is empty.
            critical = names.critical or not req.subject
            exts.append(x509.Extension(_SAN, critical, names.san))
            ext_rows.append((_SAN_DOTTED, int(critical), names.san.public_bytes()))
        # Everything goes to the builder's constructor: each setter re-checks its argument and copies the builder
        # (six copies, ~10 us). What the setters check holds here by construction: the names are x509.Name, the key
        # passed check_request_key, the serial is a positive 159-bit random_serial (or one taken from such), and
        # the times are naive UTC (as the setters would store them) from validity(), end after start.
        cert = x509.CertificateBuilder(
            issuer_name=self.issuer_name, subject_name=req.subject_name, public_key=pub, serial_number=serial,
            not_valid_before=start.replace(tzinfo=None), not_valid_after=end.replace(tzinfo=None), extensions=exts,
        ).sign(self.key, self.hash)
        der = cert.public_bytes(Encoding.DER)
        return IssuedCertificate(cert, der, serial, start, end, req.subject, ext_rows, start_iso, end_iso)


_SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER
_SKI_DOTTED = _SKI.dotted_string
_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_SAN_DOTTED = _SAN.dotted_string


@dataclass(frozen=True)
class _Fixed:
    """A template's request-independent extensions and their extension-table rows (oid, flags, DER)."""

    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    rows: tuple[tuple[str, int, bytes], ...]


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly signed certificate with the facts the request row and extension rows store."""

    cert: x509.Certificate = field(repr=False)
    der: bytes = field(repr=False)
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str
    extensions: list[tuple[str, int, bytes]] = field(repr=False)
    not_before_iso: str = ""
    not_after_iso: str = ""
