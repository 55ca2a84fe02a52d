"""Building certificates: the self-signed root, the subordinate CA's own request, and end-entity or
subordinate certificates from a checked request, a template and the policy configuration."""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ..config import PolicySection
from ..errors import CERTSRV_E_INVALID_CA_CERTIFICATE, E_INVALIDARG, Conflict, InvalidArgument
from .keys import CAPrivateKey, signing_hash
from .policy import ParsedRequest
from .templates import Template

# AD CS backdates notBefore by its clock-skew allowance (ClockSkewMinutes, 10 by default).
CLOCK_SKEW = dt.timedelta(minutes=10)
SERIAL_BITS = 159  # RFC 5280 §4.1.2.2: at most 20 octets; 159 bits keeps the DER INTEGER positive


def random_serial() -> int:
    """A random positive serial of at most 159 bits (CA/B Forum BR §7.1: ≥ 64 bits of CSPRNG output)."""
    while True:
        n = secrets.randbits(SERIAL_BITS)
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

    def validity(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """notBefore (backdated by the clock skew, not before the CA's) and notAfter (never past the CA's)."""
        ca_start = self.cert.not_valid_before_utc
        ca_end = self.cert.not_valid_after_utc
        if now >= ca_end:
            raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, "issue",
                           f"the CA certificate expired at {ca_end:%Y-%m-%dT%H:%M:%SZ}")
        start = max(now - CLOCK_SKEW, ca_start)
        end = min(now + dt.timedelta(days=self.policy.validity_days), ca_end)
        return start, end

    def build(self, req: ParsedRequest, template: Template, serial: int, now: dt.datetime) -> x509.Certificate:
        """Sign a certificate for ``req``: subject from the request, SKI, AKI, keyUsage/EKU from the template,
        SAN copied from the extension request, CDP and AIA from configuration."""
        start, end = self.validity(now)
        pub = req.public_key
        b = (
            x509.CertificateBuilder()
            .subject_name(req.csr.subject)
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=template.ca, path_length=template.path_length if template.ca
                                                 else None), critical=True)
            .add_extension(template.key_usage(pub), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(self.aki, critical=False)
        )
        if template.eku:
            b = b.add_extension(x509.ExtendedKeyUsage(list(template.eku)), critical=False)
        if req.san is not None:
            # RFC 5280 §4.2.1.6: SAN must be critical when the subject is empty.
            b = b.add_extension(req.san.value, critical=req.san.critical or not req.subject)
        if self.cdp is not None:
            b = b.add_extension(self.cdp, critical=False)
        if self.aia is not None:
            b = b.add_extension(self.aia, critical=False)
        return b.sign(self.key, self.hash)
