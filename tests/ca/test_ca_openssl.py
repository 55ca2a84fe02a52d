"""What we issue and publish, checked by the real openssl: for each CA key type, certificates verify
against the CA, carry the template's extensions, and a revoked one shows on a verified CRL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pycertsrv.ca import Authority

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
POLICY = {
    "crl_distribution_points": ["http://pki.example.com/ca.crl"],
    "aia_ca_issuers": ["http://pki.example.com/ca.cer"],
    "aia_ocsp": ["http://ocsp.example.com"],
}


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_issue_revoke_publish_verified_by_openssl(
    key_type: str, new_ca: Callable[..., Authority], req_keys: dict[str, Any], make_csr: Callable[..., bytes],
    run_openssl: Callable[..., Any], tmp_path: Path,
) -> None:
    a = new_ca(key_type, policy=POLICY)
    ca_pem = a.certificate_path
    # The CA certificate itself: CA basicConstraints critical, keyCertSign + cRLSign, SKI.
    text = run_openssl("x509", "-in", str(ca_pem), "-noout", "-text").stdout
    assert "X509v3 Basic Constraints: critical" in text and "CA:TRUE" in text
    assert "X509v3 Key Usage: critical" in text and "Certificate Sign, CRL Sign" in text
    assert "X509v3 Subject Key Identifier" in text

    issued = {}
    for kind in ("ec", "rsa"):
        info = a.submit(make_csr(req_keys[kind], f"{kind}.example.com", [f"{kind}.example.com", "alt.example.com"]))
        assert info.disposition_name == "issued" and info.status_code == 0
        leaf = tmp_path / f"{key_type}-{kind}.pem"
        leaf.write_text(info.certificate_pem or "")
        out = run_openssl("verify", "-CAfile", str(ca_pem), str(leaf))
        assert out.stdout.strip() == f"{leaf}: OK"
        text = run_openssl("x509", "-in", str(leaf), "-noout", "-text").stdout
        assert "X509v3 Basic Constraints: critical" in text and "CA:FALSE" in text
        assert "X509v3 Key Usage: critical" in text and "Digital Signature" in text
        assert ("Key Encipherment" in text) == (kind == "rsa")  # RSA key transport only for RSA keys
        assert "TLS Web Server Authentication" in text
        assert "DNS:" + f"{kind}.example.com" in text and "DNS:alt.example.com" in text
        assert "X509v3 Subject Key Identifier" in text and "X509v3 Authority Key Identifier" in text
        assert "URI:http://pki.example.com/ca.crl" in text
        assert "CA Issuers - URI:http://pki.example.com/ca.cer" in text and "OCSP - URI:http://ocsp.example.com" in text
        assert f"Subject: CN = {kind}.example.com" in text
        cert = x509.load_der_x509_certificate(a.get_certificate(info.request_id))
        assert cert.serial_number.bit_length() <= 159
        assert cert.not_valid_after_utc <= a.certificate.not_valid_after_utc
        issued[kind] = info

    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    a.revoke(issued["rsa"].serial or "", "keyCompromise", when)
    crl = a.publish_crl()
    assert crl.der_path is not None and crl.pem_path is not None
    for path in (crl.pem_path,):
        out = run_openssl("crl", "-in", str(path), "-CAfile", str(ca_pem), "-noout")
        assert "verify OK" in out.stderr + out.stdout
    out = run_openssl("crl", "-in", str(crl.der_path), "-inform", "DER", "-CAfile", str(ca_pem), "-noout", "-text")
    assert "verify OK" in out.stderr + out.stdout
    text = out.stdout
    assert f"Serial Number: {issued['rsa'].serial}" in text
    assert f"Serial Number: {issued['ec'].serial}" not in text
    assert "Key Compromise" in text
    assert "Invalidity Date" in text and "May  6 07:08:09 2024 GMT" in text
    assert "X509v3 CRL Number" in text and "X509v3 Authority Key Identifier" in text
    # The revoked leaf now fails openssl's CRL check; the other still passes.
    rsa_leaf, ec_leaf = tmp_path / f"{key_type}-rsa.pem", tmp_path / f"{key_type}-ec.pem"
    bad = run_openssl("verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile", str(crl.pem_path), str(rsa_leaf),
                      check=False)
    assert bad.returncode != 0 and "certificate revoked" in (bad.stdout + bad.stderr)
    good = run_openssl("verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile", str(crl.pem_path), str(ec_leaf))
    assert good.returncode == 0


def test_subordinate_chain_verifies(new_ca: Callable[..., Authority], req_keys: dict[str, Any],
                                    make_csr: Callable[..., bytes], run_openssl: Callable[..., Any],
                                    tmp_path: Path) -> None:
    root = new_ca("ec-p384", name="Test Root CA")
    sub = new_ca("rsa-2048", name="Test Issuing CA", subordinate=True)
    assert not sub.has_certificate
    # The parent issues from the subordinate's own request, with the subordinate template.
    # A CA template waits for an Officer; the root's owner (Administrator) issues it.
    info = root.issue(root.submit(sub.request_path.read_bytes(), template="subordinate").request_id)
    chain_pem = info.certificate_pem or ""
    sub.install_certificate((chain_pem + root.certificate_path.read_text()).encode())
    text = run_openssl("x509", "-in", str(sub.certificate_path), "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:0" in text and "Certificate Sign, CRL Sign" in text
    leaf_info = sub.submit(make_csr(req_keys["ec"], "leaf.example.com"), template="client")
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(leaf_info.certificate_pem or "")
    sub_only = tmp_path / "sub.pem"
    sub_only.write_text(chain_pem)
    out = run_openssl("verify", "-CAfile", str(root.certificate_path), "-untrusted", str(sub_only), str(leaf))
    assert out.stdout.strip().endswith("OK")
    assert "TLS Web Client Authentication" in run_openssl("x509", "-in", str(leaf), "-noout", "-text").stdout
    crl = sub.publish_crl()
    out = run_openssl("crl", "-in", str(crl.pem_path), "-CAfile", str(sub_only), "-noout")
    assert "verify OK" in out.stderr + out.stdout
