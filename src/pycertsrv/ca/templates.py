"""Certificate templates: which keyUsage, extendedKeyUsage and basicConstraints an issued
certificate carries (the AD CS notion, reduced to what a standalone CA needs)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ..errors import CERTSRV_E_UNSUPPORTED_CERT_TYPE, InvalidArgument


@dataclass(frozen=True)
class Template:
    """What a template puts in a certificate.

    :param name: template name (the ``CertificateTemplate`` request attribute).
    :param eku: extendedKeyUsage OIDs (empty: no EKU extension).
    :param ca: issue a CA certificate (basicConstraints cA=TRUE, keyCertSign, cRLSign).
    :param path_length: pathLenConstraint for CA certificates.
    :param key_encipherment: add keyEncipherment for RSA keys (RSA key transport, RFC 5246 §7.4.7.1).
    """

    name: str
    eku: tuple[ObjectIdentifier, ...]
    ca: bool = False
    path_length: int | None = None
    key_encipherment: bool = False
    description: str = ""

    def key_usage(self, rsa_key: bool) -> x509.KeyUsage:
        """The keyUsage for a certificate of this template (RFC 5280 §4.2.1.3).

        :param rsa_key: the subject key is RSA (only RSA keys can do key transport: keyEncipherment).
        """
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=self.key_encipherment and rsa_key,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=self.ca,
            crl_sign=self.ca,
            encipher_only=False,
            decipher_only=False,
        )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("server", (ExtendedKeyUsageOID.SERVER_AUTH,), key_encipherment=True,
                 description="TLS server (serverAuth)"),
        Template("client", (ExtendedKeyUsageOID.CLIENT_AUTH,), description="TLS client (clientAuth)"),
        Template("server-client", (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
                 key_encipherment=True, description="TLS server and client"),
        Template("user", (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION),
                 key_encipherment=True, description="user: clientAuth and S/MIME"),
        Template("subordinate", (), ca=True, path_length=0, description="subordinate CA (pathLen 0)"),
    )
}


def get_template(name: str) -> Template:
    """The template called ``name`` (case-insensitive) or CERTSRV_E_UNSUPPORTED_CERT_TYPE."""
    t = TEMPLATES.get(name.strip().lower())
    if t is None:
        raise InvalidArgument(CERTSRV_E_UNSUPPORTED_CERT_TYPE, "template",
                              f"unknown certificate template {name!r} (one of {', '.join(TEMPLATES)})")
    return t
