"""Full CRLs (RFC 5280 §5): building and signing, and the published files in HOME/publish."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import from_oserror
from ..fsutil import PUBLIC_DIR, PUBLIC_FILE, atomic_write, make_dirs
from .issuance import authority_key_identifier
from .keys import CAPrivateKey, signing_hash
from .revocation import crl_entry

# Published ("dynamic") file names inside HOME/publish, beside the CA certificate.
CRL_DER = "ca.crl"
CRL_PEM = "ca.crl.pem"
CA_DER = "ca.cer"


def build_crl(
    key: CAPrivateKey,
    ca_cert: x509.Certificate,
    revoked_rows: Iterable[dict[str, Any]],
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> x509.CertificateRevocationList:
    """Sign a full CRL: issuer, thisUpdate/nextUpdate, cRLNumber, AKI, one entry per revoked row.

    :param key: the CA key.
    :param ca_cert: the CA certificate (issuer name, SKI for the AKI).
    :param revoked_rows: request rows with disposition revoked (serial, revoked_at, reason, invalidity date).
    :param number: the cRLNumber (RFC 5280 §5.2.3: monotonically increasing).
    :param this_update: thisUpdate.
    :param next_update: nextUpdate.
    """
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(authority_key_identifier(ca_cert), critical=False)  # RFC 5280 §5.2.1 MUST
        .add_extension(x509.CRLNumber(number), critical=False)  # RFC 5280 §5.2.3 MUST
    )
    for row in revoked_rows:
        b = b.add_revoked_certificate(crl_entry(row))
    return b.sign(key, signing_hash(key))


def write_published(publish_dir: Path, crl: x509.CertificateRevocationList) -> tuple[Path, Path]:
    """Write the CRL as DER (``ca.crl``) and PEM (``ca.crl.pem``) atomically; returns both paths.

    A file system failure (full, read-only, not ours) is one CertSrvError naming the path; the CRL row is
    already durable, and the next publish writes the files again (issue 10: no traceback reaches a user).
    """
    der_path = publish_dir / CRL_DER
    pem_path = publish_dir / CRL_PEM
    try:
        make_dirs(publish_dir, PUBLIC_DIR)  # publish/ alone is public: it is for web publication (issue 9)
        atomic_write(der_path, crl.public_bytes(Encoding.DER), PUBLIC_FILE)
        atomic_write(pem_path, crl.public_bytes(Encoding.PEM), PUBLIC_FILE)
    except OSError as e:
        raise from_oserror(e, publish_dir, "cannot write the published CRL",
                           "the CRL is stored in the database: run certsrv crl publish again once this is "
                           "fixed") from None
    return der_path, pem_path


def write_ca_certificate(cert_path: Path, cert: x509.Certificate, chain: Iterable[x509.Certificate] = ()) -> None:
    """Publish the CA certificate as PEM at ``cert_path`` (with its parents after it) and as DER ``ca.cer``."""
    make_dirs(cert_path.parent, PUBLIC_DIR)
    pem = cert.public_bytes(Encoding.PEM) + b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    atomic_write(cert_path, pem, PUBLIC_FILE)
    atomic_write(cert_path.parent / CA_DER, cert.public_bytes(Encoding.DER), PUBLIC_FILE)
