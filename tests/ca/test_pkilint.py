"""Checked by an independent linter (issue 9): pkilint's command-line tools, run as subprocesses.

- A certificate from every built-in template and a CRL: ``lint_pkix_cert`` / ``lint_crl -p PKIX`` report
  no ERROR (or FATAL).
- The ``server`` template with CRL and AIA URLs and the DV policy configured: ``lint_cabf_serverauth_cert
  -t DV-FINAL-CERTIFICATE`` reports no ERROR. On the defaults before issue 9 it reported five (365 days over
  the 200-day limit, no CRL distribution point / AIA, no certificatePolicies); the defaults now keep the
  server template at 200 days, and the remaining items are configuration a private CA must choose.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority

BIN = Path(sys.executable).parent


def lint(tool: str, *args: str) -> list[str]:
    """Run a pkilint tool; the findings of severity ERROR or worse (one per line)."""
    exe = shutil.which(tool, path=str(BIN)) or shutil.which(tool)
    assert exe, f"{tool} not installed (pip install pkilint: it is in the test extra)"
    res = subprocess.run([exe, "lint", "-s", "ERROR", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode >= 0 and "Traceback" not in res.stderr, res.stderr  # exit status: findings count
    found = [ln.strip() for ln in res.stdout.splitlines() if "(ERROR)" in ln or "(FATAL)" in ln]
    assert bool(found) == (res.returncode != 0), res.stdout  # the parse agrees with pkilint's own verdict
    return found


def _csr(key: Any, cn: str, san: list[x509.GeneralName] | None) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


REQUESTS: dict[str, tuple[str, list[x509.GeneralName] | None]] = {
    "server": ("www.example.com", None),  # the CN is copied into the SAN by the template
    "client": ("Alice Client", None),
    "server-client": ("both.example.com", [x509.DNSName("both.example.com")]),
    "user": ("Alice User", [x509.RFC822Name("alice@example.com")]),
    "subordinate": ("Lint Sub CA", None),
}


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_builtin_templates_and_crl_pass_pkix_lints(new_ca: Callable[..., Authority], tmp_path: Path,
                                                   key_kind: str) -> None:
    a = new_ca("rsa-2048" if key_kind == "rsa" else "ec-p256", name="Lint CA")
    key = rsa.generate_private_key(65537, 2048) if key_kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    for template, (cn, san) in REQUESTS.items():
        info = a.submit(_csr(key, cn, san), template=template)
        if template == "subordinate":
            assert info.disposition_name == "pending"  # a CA template waits for an Officer
            info = a.issue(info.request_id)
        path = tmp_path / f"{template}.der"
        path.write_bytes(a.get_certificate(info.request_id))  # re-read from the database
        assert lint("lint_pkix_cert", str(path)) == [], template
    serial = a.view(disposition="issued", limit=1)[0].serial
    assert serial
    a.revoke(serial, "keyCompromise")
    crl = a.publish_crl()
    assert crl.der_path is not None
    assert lint("lint_crl", "-t", "CRL", "-p", "PKIX", str(crl.der_path)) == []


def _cabf(a: Authority, tmp_path: Path) -> list[str]:
    info = a.submit(_csr(ec.generate_private_key(ec.SECP256R1()), "www.example.com", None), template="server")
    path = tmp_path / "server.der"
    path.write_bytes(a.get_certificate(info.request_id))
    return lint("lint_cabf_serverauth_cert", "-t", "DV-FINAL-CERTIFICATE", str(path))


def test_server_template_passes_cabf_dv_lints_when_configured(new_ca: Callable[..., Authority],
                                                              tmp_path: Path) -> None:
    plain = new_ca(name="Plain CA", sub="plain")
    before = _cabf(plain, tmp_path)
    # The defaults leave revocation URLs and the policy OID to the operator: exactly these remain.
    assert not any("validity_period" in f for f in before), before
    assert sorted(f.split(" ")[0] for f in before) == sorted([
        "cabf.serverauth.subscriber.revocation_information_absent",
        "msft.end_entity.revocation_information_absent",
        "cabf.serverauth.subscriber.authority_info_access_extension_absent",
        "cabf.serverauth.subscriber.certificate_policies_extension_absent",
    ]), before
    a = new_ca(name="Web CA", sub="web", policy={
        "crl_distribution_points": ["http://pki.example.com/ca.crl"],
        "aia_ca_issuers": ["http://pki.example.com/ca.crt"],
    })
    root = a.home.root
    a.close()
    cfg = config_mod.load(root)
    server = cfg.templates["server"].model_copy(update={"certificate_policies": ["2.23.140.1.2.1"]})
    config_mod.save(root, cfg.model_copy(update={"templates": {**cfg.templates, "server": server}}))
    with Authority.open(root) as b:
        assert _cabf(b, tmp_path) == []
