"""Every bad input gets the spec's HRESULT and a one-line message naming the subject, and the database
(applied LSN and every row of every table, re-read from SQLite) is exactly as before."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.ca.keys import generate_key
from pycertsrv.errors import CertSrvError


@pytest.fixture(scope="module")
def weak_keys() -> dict[str, Any]:
    return {"rsa1024": rsa.generate_private_key(65537, 1024), "dsa": dsa.generate_private_key(2048)}


def _expect(a: Authority, snapshot: Callable[[Authority], Any], fn: Callable[[], Any], cls: type[CertSrvError],
            hresult: int, subject: str, words: str) -> CertSrvError:
    before = snapshot(a)
    with pytest.raises(cls) as ei:
        fn()
    err = ei.value
    assert err.hresult == hresult, f"{err} (want 0x{hresult:08X})"
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{subject}: 0x{hresult:08X} {E.hresult_name(hresult)}: "), text
    assert words.lower() in err.message.lower(), text
    assert snapshot(a) == before  # nothing written: same applied LSN, same rows
    return err


def _seed(a: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> str:
    """One issued certificate so the 'unchanged' snapshot compares non-empty tables."""
    info = a.submit(make_csr(req_keys["ec"], "seed.example.com"), attributes={"Note": "seed"})
    a.publish_crl()
    return info.serial or ""


def test_bad_request_bytes(ca: Authority, snapshot: Callable[[Authority], Any], make_csr: Callable[..., bytes],
                           req_keys: dict[str, Any]) -> None:
    _seed(ca, make_csr, req_keys)
    good_der = make_csr(req_keys["ec"], "x.example.com", pem=False)
    cases: list[tuple[bytes, int, str]] = [
        (b"hello, this is not a request", E.ERROR_INVALID_DATA, "neither PEM"),
        (b"", E.ERROR_INVALID_DATA, "empty"),
        (b"\x30\x03\x02\x01\x05", E.ERROR_INVALID_DATA, "not a PKCS #10"),
        (good_der[:-7], E.ERROR_INVALID_DATA, "not a PKCS #10"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", E.ERROR_INVALID_DATA,
         "no CERTIFICATE REQUEST"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n@@@@\n-----END CERTIFICATE REQUEST-----\n", E.ERROR_INVALID_DATA,
         "base64"),
        (base64.b64encode(b"\x30\x00garbage"), E.ERROR_INVALID_DATA, "not a PKCS #10"),
        (b"\x30" + b"\x00" * (64 * 1024), E.E_INVALIDARG, "over the 65536-byte limit"),
    ]
    for data, hresult, words in cases:
        _expect(ca, snapshot, lambda d=data: ca.submit(d), E.InvalidArgument, hresult, "submit", words)


def test_bad_signature_and_keys(ca: Authority, snapshot: Callable[[Authority], Any], make_csr: Callable[..., bytes],
                                req_keys: dict[str, Any], weak_keys: dict[str, Any]) -> None:
    _seed(ca, make_csr, req_keys)
    for kind in ("ec", "rsa"):
        der = make_csr(req_keys[kind], "good.example.com", pem=False)
        tampered = der.replace(b"good.example.com", b"evil.example.com", 1)  # subject changed after signing
        assert tampered != der
        _expect(ca, snapshot, lambda t=tampered: ca.submit(t), E.InvalidArgument, E.NTE_BAD_SIGNATURE, "submit",
                "request for 'CN=evil.example.com': signature does not verify")
    _expect(ca, snapshot, lambda: ca.submit(make_csr(weak_keys["rsa1024"], "weak.example.com")), E.InvalidArgument,
            E.CERTSRV_E_KEY_LENGTH, "submit", "RSA key of 1024 bits")
    _expect(ca, snapshot, lambda: ca.submit(make_csr(weak_keys["dsa"], "dsa.example.com")), E.InvalidArgument,
            E.NTE_BAD_ALGID, "submit", "DSA keys are not supported")
    no_name = make_csr(req_keys["ec"], None, [])
    _expect(ca, snapshot, lambda: ca.submit(no_name), E.InvalidArgument, E.CERTSRV_E_BAD_REQUESTSUBJECT, "submit",
            "empty subject and no subjectAltName")
    only_san = make_csr(req_keys["ec"], None, ["san-only.example.com"])
    _expect(ca, snapshot, lambda: ca.submit(only_san, template="subordinate"), E.InvalidArgument,
            E.CERTSRV_E_BAD_REQUESTSUBJECT, "submit", "CA certificate needs a subject")
    _expect(ca, snapshot, lambda: ca.submit(make_csr(req_keys["ec"]), template="nonesuch"), E.InvalidArgument,
            E.CERTSRV_E_UNSUPPORTED_CERT_TYPE, "template", "unknown certificate template 'nonesuch'")
    _expect(ca, snapshot, lambda: ca.submit(make_csr(req_keys["ec"]), attributes={"CertificateTemplate": "webby"}),
            E.InvalidArgument, E.CERTSRV_E_UNSUPPORTED_CERT_TYPE, "template", "'webby'")


def test_issue_deny_twice_and_unknown(new_ca: Callable[..., Authority], snapshot: Callable[[Authority], Any],
                                      make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    a = new_ca(policy={"mode": "pending"})
    p1 = a.submit(make_csr(req_keys["ec"], "one.example.com"))
    p2 = a.submit(make_csr(req_keys["rsa"], "two.example.com"))
    assert p1.disposition_name == p2.disposition_name == "pending"
    a.issue(p1.request_id)
    a.deny(p2.request_id)
    r1, r2 = p1.request_id, p2.request_id
    _expect(a, snapshot, lambda: a.issue(r1), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"request {r1}",
            "cannot issue: request is issued, not pending")
    _expect(a, snapshot, lambda: a.deny(r1), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"request {r1}",
            "cannot deny: request is issued")
    _expect(a, snapshot, lambda: a.deny(r2), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"request {r2}",
            "cannot deny: request is denied, not pending")
    _expect(a, snapshot, lambda: a.issue(r2), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"request {r2}",
            "cannot issue: request is denied")
    _expect(a, snapshot, lambda: a.resubmit(r1), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"request {r1}",
            "cannot resubmit: request is issued")
    for verb in ("issue", "deny", "resubmit", "get_request"):
        _expect(a, snapshot, lambda v=verb: getattr(a, v)(999), E.NotFound, E.CERTSRV_E_NO_REQUEST, "request 999",
                "no such request")
    _expect(a, snapshot, lambda: a.issue(0), E.InvalidArgument, E.E_INVALIDARG, "request", "positive integer")


def test_revoke_refusals(ca: Authority, snapshot: Callable[[Authority], Any], make_csr: Callable[..., bytes],
                         req_keys: dict[str, Any], new_ca: Callable[..., Authority]) -> None:
    serial = _seed(ca, make_csr, req_keys)
    _expect(ca, snapshot, lambda: ca.revoke("0123456789ABCDEF"), E.NotFound, E.CRYPT_E_NOT_FOUND,
            "serial 0123456789ABCDEF", "no certificate with this serial")
    _expect(ca, snapshot, lambda: ca.revoke("01:23:45:67:89:ab:cd:ef"), E.NotFound, E.CRYPT_E_NOT_FOUND,
            "serial 0123456789ABCDEF", "no certificate")
    _expect(ca, snapshot, lambda: ca.unrevoke("AB"), E.NotFound, E.CRYPT_E_NOT_FOUND, "serial AB", "no certificate")
    _expect(ca, snapshot, lambda: ca.revoke("zz-top"), E.InvalidArgument, E.E_INVALIDARG, "serial",
            "not a hexadecimal serial")
    _expect(ca, snapshot, lambda: ca.revoke(serial, 7), E.InvalidArgument, E.E_INVALIDARG, "revocation reason",
            "reason code 7 is not used")
    _expect(ca, snapshot, lambda: ca.revoke(serial, "7"), E.InvalidArgument, E.E_INVALIDARG, "revocation reason",
            "code 7")
    _expect(ca, snapshot, lambda: ca.revoke(serial, "bogus"), E.InvalidArgument, E.E_INVALIDARG,
            "revocation reason", "unknown reason 'bogus'")
    _expect(ca, snapshot, lambda: ca.revoke(serial, "removeFromCRL"), E.InvalidArgument, E.E_INVALIDARG,
            "revocation reason", "use unrevoke")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    _expect(ca, snapshot, lambda: ca.revoke(serial, 1, future), E.InvalidArgument, E.E_INVALIDARG,
            "invalidity date", "in the future")
    _expect(ca, snapshot, lambda: ca.unrevoke(serial), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}",
            "only a certificate on hold")
    ca.revoke(serial, "superseded")
    _expect(ca, snapshot, lambda: ca.revoke(serial.lower(), "keyCompromise"), E.Conflict,
            E.CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}", "already revoked (superseded)")
    _expect(ca, snapshot, lambda: ca.unrevoke(serial), E.Conflict, E.CERTSRV_E_BAD_REQUESTSTATUS, f"serial {serial}",
            "it is revoked (superseded)")
    # A pending request has no certificate to get.
    pend = new_ca(policy={"mode": "pending"}, sub="pending-home")
    p = pend.submit(make_csr(req_keys["ec"], "p.example.com"))
    _expect(pend, snapshot, lambda: pend.get_certificate(p.request_id), E.NotFound, E.CERTSRV_E_PROPERTY_EMPTY,
            f"request {p.request_id}", "no certificate: the request is pending")


def test_subordinate_install_refusals(new_ca: Callable[..., Authority], snapshot: Callable[[Authority], Any],
                                      make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    root = new_ca("ec-p256", name="Refusal Root")
    sub = new_ca("ec-p384", name="Refusal Sub", subordinate=True)
    ca_path = sub.certificate_path
    _expect(sub, snapshot, lambda: sub.submit(make_csr(req_keys["ec"])), E.Conflict,
            E.CERTSRV_E_INVALID_CA_CERTIFICATE, "Refusal Sub", "not installed yet")
    _expect(sub, snapshot, lambda: sub.publish_crl(), E.Conflict, E.CERTSRV_E_INVALID_CA_CERTIFICATE, "Refusal Sub",
            "install-cert")
    other = root.submit(make_csr(req_keys["ec"], "other.example.com")).certificate_pem or ""
    _expect(sub, snapshot, lambda: sub.install_certificate(other.encode()), E.InvalidArgument, E.CRYPT_E_NO_MATCH,
            "install-cert", "does not match this CA's key")
    not_ca = root.submit(sub.request_path.read_bytes(), template="client").certificate_pem or ""
    _expect(sub, snapshot, lambda: sub.install_certificate(not_ca.encode()), E.InvalidArgument,
            E.CERTSRV_E_INVALID_CA_CERTIFICATE, "install-cert", "is not a CA certificate")
    _expect(sub, snapshot, lambda: sub.install_certificate(b"junk"), E.InvalidArgument, E.ERROR_INVALID_DATA,
            "install-cert", "not an X.509 certificate")
    # Signed by root but presented with another CA as its parent: the parent's signature must verify.
    impostor = new_ca("ec-p256", name="Refusal Root", sub="impostor", key=generate_key("ec-p256"))  # other key
    # A CA template never issues at once: the root's Officer (here its owner) issues it.
    pending = root.submit(sub.request_path.read_bytes(), template="subordinate")
    good = root.issue(pending.request_id).certificate_pem or ""
    bundle = (good + impostor.certificate_path.read_text()).encode()
    _expect(sub, snapshot, lambda: sub.install_certificate(bundle), E.InvalidArgument, E.NTE_BAD_SIGNATURE,
            "install-cert", "is not signed by CN=Refusal Root")
    assert not ca_path.exists() and not sub.has_certificate
    sub.install_certificate(good.encode())
    _expect(sub, snapshot, lambda: sub.install_certificate(good.encode()), E.Conflict, E.ERROR_ALREADY_EXISTS,
            "install-cert", "installed already")


def test_view_filter_refusals(ca: Authority, snapshot: Callable[[Authority], Any]) -> None:
    _expect(ca, snapshot, lambda: ca.view(disposition="approved"), E.InvalidArgument, E.E_INVALIDARG, "disposition",
            "unknown disposition 'approved'")
    _expect(ca, snapshot, lambda: ca.view(serial="0"), E.InvalidArgument, E.E_INVALIDARG, "serial", "serial 0")

