"""init and open: the home's files, key storage and passphrases, refusing an existing or busy home,
the empty database, and the subordinate flow (request, install, issue)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pycertsrv import config
from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.store import TABLES


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_makes_a_home(tmp_path: Path, ca_key: Callable[[str], Any]) -> None:
    home = tmp_path / "ca"
    a = Authority.init(home, "Init Test CA", key_type="ec-p384", days=100, key=ca_key("ec-p384"))
    try:
        key_path = home / "private" / "ca.key"
        assert _mode(key_path) == 0o600 and _mode(home / "private") == 0o700
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
        cert = x509.load_pem_x509_certificate((home / "publish" / "ca.crt").read_bytes())
        assert cert.subject == cert.issuer and cert.subject.rfc4514_string() == "CN=Init Test CA"
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 100
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
        cfg = config.load(home)
        assert (cfg.ca.name, cfg.ca.key_type, cfg.ca.validity_days, cfg.ca.subordinate) == (
            "Init Test CA", "ec-p384", 100, False)
        # An empty database: no row but the archive lineage recorded at create (issue 13).
        assert all(a.store.count(t) == 0 for t in TABLES if t != "setting")
        assert {r["name"] for r in a.store.select("setting")} == {"archive_lineage", "archive_lineage_start"}
        assert a.store.applied_lsn == 0
        # The open CA holds the home: a second opener and a forced re-init are refused.
        with pytest.raises(E.Conflict) as ei:
            Authority.open(home)
        assert ei.value.hresult == E.ERROR_SHARING_VIOLATION
        with pytest.raises(E.Conflict) as ei:
            Authority.init(home, "Other", force=True, key=ca_key("ec-p256"))
        assert ei.value.hresult == E.ERROR_SHARING_VIOLATION
    finally:
        a.close()
    with pytest.raises(E.Conflict) as ei:
        Authority.init(home, "Other", key=ca_key("ec-p256"))
    assert ei.value.hresult == E.ERROR_FILE_EXISTS and "--force" in str(ei.value)
    assert config.load(home).ca.name == "Init Test CA"  # untouched
    b = Authority.init(home, "Replaced CA", force=True, key=ca_key("ec-p256"))
    try:
        assert b.certificate.subject.rfc4514_string() == "CN=Replaced CA"
        assert config.load(home).ca.name == "Replaced CA"
    finally:
        b.close()


def test_bad_init_arguments_leave_nothing(tmp_path: Path, ca_key: Callable[[str], Any]) -> None:
    home = tmp_path / "x"
    for kwargs, hresult in [({"key_type": "rsa-1024"}, E.E_INVALIDARG), ({"days": 0}, E.E_INVALIDARG),
                            ({"key_type": "ec-p384", "key": ca_key("ec-p256")}, E.E_INVALIDARG)]:
        with pytest.raises(E.InvalidArgument) as ei:
            Authority.init(home, "Bad", **kwargs)
        assert ei.value.hresult == hresult
    with pytest.raises(E.InvalidArgument):
        Authority.init(home, "", key=ca_key("ec-p256"))
    assert not home.exists() or not any(home.iterdir())


def test_encrypted_key_and_passphrase_sources(tmp_path: Path, ca_key: Callable[[str], Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTSRV_KEY_PASSPHRASE", raising=False)
    home = tmp_path / "enc"
    Authority.init(home, "Encrypted CA", passphrase=b"correct horse", key=ca_key("ec-p256")).close()
    pem = (home / "private" / "ca.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and _mode(home / "private" / "ca.key") == 0o600
    with pytest.raises(E.InvalidArgument) as ei:
        Authority.open(home)
    assert ei.value.hresult == E.ERROR_INVALID_PASSWORD and "CERTSRV_KEY_PASSPHRASE" in ei.value.message
    with pytest.raises(E.InvalidArgument) as ei:
        Authority.open(home, passphrase=b"wrong")
    assert ei.value.hresult == E.ERROR_INVALID_PASSWORD and "wrong passphrase" in ei.value.message
    Authority.open(home, passphrase=b"correct horse").close()
    monkeypatch.setenv("CERTSRV_KEY_PASSPHRASE", "correct horse")
    Authority.open(home).close()
    # A recorded passphrase file is used by later opens without any argument.
    monkeypatch.delenv("CERTSRV_KEY_PASSPHRASE")
    pfile = tmp_path / "pass.txt"
    pfile.write_text("file phrase\n")
    home2 = tmp_path / "enc2"
    Authority.init(home2, "File CA", passphrase=b"file phrase", passphrase_file=str(pfile),
                   key=ca_key("ec-p256")).close()
    with Authority.open(home2) as a:
        assert a.name == "File CA"


def test_subordinate_flow(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                          req_keys: dict[str, Any]) -> None:
    root = new_ca("rsa-2048", name="Flow Root")
    sub = new_ca("ec-p256", name="Flow Sub", subordinate=True)
    home = sub.home
    csr = x509.load_pem_x509_csr(sub.request_path.read_bytes())
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == "CN=Flow Sub"
    assert not sub.certificate_path.exists() and not sub.crl_due()
    pending = root.submit(sub.request_path.read_bytes(), template="subordinate")
    assert pending.disposition_name == "pending"  # a CA template never issues at once
    signed = root.issue(pending.request_id)
    sub.close()
    # Reopen before installing: a subordinate home without a certificate opens, and says what to do.
    b = Authority.open(home.root)
    try:
        assert not b.has_certificate
        cert = b.install_certificate((signed.certificate_pem or "").encode() + root.certificate_path.read_bytes())
        assert cert.issuer.rfc4514_string() == "CN=Flow Root"
        leaf = b.submit(make_csr(req_keys["rsa"], "sub-leaf.example.com"))
        assert leaf.disposition_name == "issued"
    finally:
        b.close()
    c = Authority.open(home.root)  # the installed certificate (and its chain) is read back from disk
    try:
        assert c.certificate.serial_number == cert.serial_number
        assert [x.subject.rfc4514_string() for x in c.chain] == ["CN=Flow Root"]
        assert c.get_request(1).disposition_name == "issued"
    finally:
        c.close()
