"""The CA part of ``certsrv demo``: a throw-away CA issues, revokes and publishes a CRL, and the real
``openssl`` checks the results."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .authority import Authority


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


def _openssl(*args: str) -> tuple[bool, str]:
    if shutil.which("openssl") is None:
        return False, "openssl not installed"
    p = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    out = (p.stdout + p.stderr).strip().splitlines()
    return p.returncode == 0, out[-1] if out else ""


def run_ca_demo(echo: Callable[[str], Any] = print, home: Path | None = None) -> dict[str, Any]:
    """Make a CA in a temporary home, issue an ECDSA and an RSA certificate, revoke one, publish a CRL,
    verify everything with openssl, and tell the story through ``echo``.

    :param echo: where each line of the story goes.
    :param home: use this (new) directory instead of a temporary one (kept afterwards).
    """
    tmp = None if home is not None else tempfile.TemporaryDirectory(prefix="certsrv-demo-")
    root = Path(home) if home is not None else Path(tmp.name) / "ca"  # type: ignore[union-attr]
    result: dict[str, Any] = {"home": str(root)}
    try:
        a = Authority.init(root, "pycertsrv Demo Root CA", key_type="ec-p256", days=365,
                           policy={"crl_distribution_points": ["http://pki.example.test/ca.crl"]})
        try:
            echo(f"1. made a CA in {root}: {a.certificate.subject.rfc4514_string()} ({a.key_type})")
            ca_pem = str(a.certificate_path)
            issued = []
            for kind, key in (("ecdsa", ec.generate_private_key(ec.SECP256R1())),
                              ("rsa", rsa.generate_private_key(65537, 2048))):
                info = a.submit(_csr(key, f"{kind}.example.test"), requester="demo")
                leaf = root / f"{kind}.pem"
                leaf.write_text(info.certificate_pem or "")
                ok, line = _openssl("verify", "-CAfile", ca_pem, str(leaf))
                echo(f"2. issued request {info.request_id} ({kind}) serial {info.serial}; openssl verify: {line}")
                issued.append({"request_id": info.request_id, "serial": info.serial, "kind": kind,
                               "openssl_verify": ok})
            victim = str(issued[1]["serial"])
            rev = a.revoke(victim, "keyCompromise")
            echo(f"3. revoked {victim} ({rev.revocation_reason_name})")
            crl = a.publish_crl()
            ok_crl, line = _openssl("crl", "-in", str(crl.pem_path), "-CAfile", ca_pem, "-noout")
            echo(f"4. published CRL {crl.number} with {crl.entries} entry to {crl.der_path}; openssl crl: {line}")
            ok_rev, line = _openssl("verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", str(crl.pem_path),
                                    str(root / "rsa.pem"))
            echo(f"5. the revoked certificate now fails openssl's CRL check: {line}")
            result.update(
                ca_subject=a.certificate.subject.rfc4514_string(),
                issued=issued,
                revoked=victim,
                crl_number=crl.number,
                crl_entries=crl.entries,
                openssl_crl_verify=ok_crl,
                revoked_rejected=not ok_rev,
                dynamic_files=[str(p) for p in a.dynamic_files()],
                ok=all(i["openssl_verify"] for i in issued) and ok_crl and not ok_rev,
            )
        finally:
            a.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result
