"""Request lifecycle: submit (PEM/DER), pending/issue/deny/resubmit, what the rows hold, view filters,
get by serial or id, and persistence across close/open (state re-read from disk)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, ExtensionOID

from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.ca.models import serial_hex
from pycertsrv.store import DISP_DENIED, DISP_ISSUED, DISP_PENDING, DISP_REVOKED


def test_submit_pem_and_der_issue_at_once(ca: Authority, make_csr: Callable[..., bytes],
                                          req_keys: dict[str, Any]) -> None:
    pem = make_csr(req_keys["ec"], "pem.example.com")
    der = make_csr(req_keys["rsa"], "der.example.com", pem=False)
    bare_b64 = b"".join(ln for ln in pem.splitlines() if not ln.startswith(b"-----"))
    infos = [ca.submit(pem, requester="alice"), ca.submit(der, requester="bob"), ca.submit(bare_b64)]
    assert [i.request_id for i in infos] == [1, 2, 3]
    for info in infos:
        assert info.disposition == DISP_ISSUED and info.status_code == 0 and info.message == "Issued"
        assert info.serial and info.serial == info.serial.upper() and len(info.serial) % 2 == 0
        row = ca.store.get("request", info.request_id)
        assert row is not None
        assert row["serial"] == info.serial
        cert = x509.load_der_x509_certificate(row["raw_cert"])
        assert serial_hex(cert.serial_number) == info.serial
        assert row["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert x509.load_der_x509_csr(row["raw_request"]).subject == cert.subject
        assert row["submitted_at"].endswith("Z") and len(row["submitted_at"]) == 20
    assert ca.get_request(1).requester == "alice"
    assert len({i.serial for i in infos}) == 3


def test_rows_hold_attributes_and_extensions(ca: Authority, make_csr: Callable[..., bytes],
                                             req_keys: dict[str, Any]) -> None:
    csr = make_csr(req_keys["ec"], "attr.example.com",
                   attrs=[(AttributeOID.CHALLENGE_PASSWORD, b"s3cret"), (AttributeOID.UNSTRUCTURED_NAME, b"box-7")])
    info = ca.submit(csr, attributes={"CertificateTemplate": "client", "Requested-By": "ops"})
    assert info.template == "client"
    attrs = ca.request_attributes(info.request_id)
    assert attrs == {"unstructuredName": "box-7", "CertificateTemplate": "client", "Requested-By": "ops"}
    assert "s3cret" not in repr(ca.store.select("attribute"))  # challenge passwords are never stored
    exts = {r["oid"]: r for r in ca.certificate_extensions(info.request_id)}
    cert = x509.load_der_x509_certificate(ca.get_certificate(info.request_id))
    assert set(exts) == {e.oid.dotted_string for e in cert.extensions}
    for e in cert.extensions:
        assert exts[e.oid.dotted_string]["flags"] == (1 if e.critical else 0)
        assert bytes(exts[e.oid.dotted_string]["value"]) == e.value.public_bytes()
    assert exts[ExtensionOID.BASIC_CONSTRAINTS.dotted_string]["flags"] == 1
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_pending_issue_deny_resubmit(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                                     req_keys: dict[str, Any]) -> None:
    a = new_ca(policy={"mode": "pending"})
    p = [a.submit(make_csr(req_keys["ec"], f"p{i}.example.com")) for i in range(3)]
    for info in p:
        assert info.disposition == DISP_PENDING and info.message == "Taken Under Submission"
        assert info.serial is None and info.certificate_der is None
        assert a.store.count("extension", [("request_id", "=", info.request_id)]) == 0
    issued = a.issue(p[0].request_id, by="officer1")
    assert issued.disposition == DISP_ISSUED and issued.message == "Issued by officer1" and issued.serial
    denied = a.deny(p[1].request_id, by="officer2")
    assert denied.disposition == DISP_DENIED and denied.status_code == E.CERTSRV_E_ADMIN_DENIED_REQUEST
    assert denied.message == "Denied by officer2" and denied.serial is None
    again = a.resubmit(p[1].request_id, by="officer3")
    assert again.disposition == DISP_ISSUED and again.status_code == 0 and again.message == "Resubmitted by officer3"
    pend = a.resubmit(p[2].request_id)
    assert pend.disposition == DISP_ISSUED
    # Re-read from SQLite, not from the returned objects.
    rows = {r.request_id: r for r in a.view(limit=None)}
    assert [rows[i].disposition_name for i in (1, 2, 3)] == ["issued", "issued", "issued"]
    assert rows[2].status_code == 0 and rows[2].serial == again.serial
    assert a.store.count("extension", [("request_id", "=", 2)]) >= 5


def test_view_filters_and_get(ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    infos = [ca.submit(make_csr(req_keys["ec"], f"v{i}.example.com")) for i in range(5)]
    ca.revoke(infos[1].serial or "", "superseded")
    assert [r.request_id for r in ca.view(disposition="revoked")] == [2]
    assert [r.request_id for r in ca.view(disposition=DISP_ISSUED)] == [1, 3, 4, 5]
    assert [r.request_id for r in ca.view(disposition="20")] == [1, 3, 4, 5]
    s = infos[3].serial or ""
    colon = ":".join(s[i:i + 2] for i in range(0, len(s), 2)).lower()
    assert [r.request_id for r in ca.view(serial=colon)] == [4]
    assert [r.request_id for r in ca.view(request_id=5)] == [5]
    assert ca.view(expired=True) == []
    assert len(ca.view(expired=False)) == 5
    assert [r.request_id for r in ca.view(limit=2, offset=1)] == [2, 3]
    assert ca.get_certificate(4) == ca.get_certificate(colon) == ca.get_certificate("0x" + s.lower())
    j = ca.view(request_id=2)[0].to_json()
    assert j["disposition"] == DISP_REVOKED and j["disposition_name"] == "revoked"
    assert j["revocation_reason_name"] == "superseded" and j["certificate_pem"].startswith("-----BEGIN CERTIFICATE")
    for key in ("request_id", "status_code", "message", "requester", "submitted_at", "resolved_at", "serial",
                "subject", "not_before", "not_after", "revoked_at", "revocation_reason"):
        assert key in j


def test_validity_capped_by_ca_and_config(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                                          req_keys: dict[str, Any]) -> None:
    short = new_ca(days=30, policy={"validity_days": 365})
    info = short.submit(make_csr(req_keys["ec"]))
    assert info.not_after == short.summary()["not_after"]  # never past the CA's own notAfter
    normal = new_ca(policy={"validity_days": 90}, sub="normal")
    cert = x509.load_der_x509_certificate(normal.get_certificate(normal.submit(make_csr(req_keys["ec"])).request_id))
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    # RFC 5280 §4.1.2.5: both ends count, so 90 days end one second before notBefore + 90 days
    # (notBefore backdated by the clock skew, so the period covers now .. now + 90 days - skew).
    assert span == dt.timedelta(days=90) - dt.timedelta(seconds=1)
    # The server template caps it further (CA/B Forum BR §6.3.2: 200 days), the client template does not.
    long = new_ca(policy={"validity_days": 365}, sub="long")
    for template, days in (("server", 200), ("client", 365)):
        c = x509.load_der_x509_certificate(long.get_certificate(long.submit(make_csr(req_keys["ec"]),
                                                                            template=template).request_id))
        assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=days, seconds=-1), template
    assert cert.not_valid_before_utc >= normal.certificate.not_valid_before_utc


def test_state_persists_across_reopen(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                                      req_keys: dict[str, Any]) -> None:
    a = new_ca(policy={"mode": "pending"})
    home = a.home
    p = a.submit(make_csr(req_keys["ec"], "keep.example.com"))
    i = a.resubmit(a.submit(make_csr(req_keys["rsa"], "keep2.example.com")).request_id)
    a.revoke(i.serial or "", "certificateHold")
    crl = a.publish_crl()
    a.close()
    b = Authority.open(home.root)
    try:
        assert b.get_request(p.request_id).disposition == DISP_PENDING
        r = b.get_request(i.request_id)
        assert r.disposition == DISP_REVOKED and r.revocation_reason == 6 and r.serial == i.serial
        assert b.latest_crl() is not None and b.latest_crl().number == crl.number  # type: ignore[union-attr]
        assert b.issue(p.request_id).disposition == DISP_ISSUED
        assert b.submit(make_csr(req_keys["ec"], "after.example.com")).request_id == 3  # ids continue
        assert b.publish_crl().number == crl.number + 1
        assert b.config.policy.mode == "pending"
    finally:
        b.close()
