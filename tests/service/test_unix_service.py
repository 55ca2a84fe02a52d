"""The real service over its Unix socket: enrollment, administration, errors, limits, control, OpenAPI, audit."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pycertsrv.ca.models import serial_hex
from pycertsrv.errors import (
    CERTSRV_E_BAD_REQUESTSTATUS,
    CERTSRV_E_NO_REQUEST,
    E_ACCESSDENIED,
    E_INVALIDARG,
    Conflict,
    InvalidArgument,
    NotFound,
)
from pycertsrv.service import audit
from support import Service, make_csr


def _raw(service: Service) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(service.socket)), base_url="http://certsrv",
                        trust_env=False)


def _openssl_verify(tmp_path: Path, service: Service, der: bytes) -> None:
    cert = x509.load_der_x509_certificate(der)
    p = tmp_path / f"{serial_hex(cert.serial_number)}.pem"
    from cryptography.hazmat.primitives.serialization import Encoding

    p.write_bytes(cert.public_bytes(Encoding.PEM))
    r = subprocess.run(["openssl", "verify", "-CAfile", str(service.home.root / "publish" / "ca.crt"), str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr


def test_submit_pending_then_issue_and_fetch(service: Service, tmp_path: Path) -> None:
    with service.client() as c:
        sub = c.submit(make_csr("a.example.com"))
        assert sub["disposition_name"] == "pending" and sub["certificate_pem"] is None
        rid = sub["request_id"]
        assert c.get_request(rid)["disposition_name"] == "pending"
        with pytest.raises(NotFound):
            c.get_certificate(rid)  # nothing issued yet
        issued = c.issue(rid)
        assert issued["disposition_name"] == "issued" and issued["serial"]
        # Re-read from the service: the row and the certificate agree by both keys.
        again = c.get_request(rid)
        assert again["disposition"] == 20 and again["serial"] == issued["serial"]
        der_by_serial = c.get_certificate(issued["serial"])
        assert der_by_serial == c.get_certificate(rid)
        cert = x509.load_der_x509_certificate(der_by_serial)
        assert cert.serial_number == int(issued["serial"], 16)
        # The service prints serials in whole octets (serial_hex): "0A..." when the first byte is < 0x10.
        assert serial_hex(cert.serial_number) == issued["serial"]
        assert cert.subject.rfc4514_string() == "CN=a.example.com"
        # The requester is the caller as SO_PEERCRED saw it, not anything the body said.
        import os

        assert again["requester"] == f"uid:{os.getuid()}"
    _openssl_verify(tmp_path, service, der_by_serial)


def test_submit_der_csr(service: Service) -> None:
    with service.client() as c:
        r = c.submit(make_csr("der.example.com", pem=False))
        assert r["disposition_name"] == "pending"
        assert c.get_request(r["request_id"])["request_subject"] == "CN=der.example.com"


def test_deny_then_resubmit(service: Service) -> None:
    with service.client() as c:
        rid = c.submit(make_csr("d.example.com"))["request_id"]
        assert c.deny(rid)["disposition_name"] == "denied"
        assert c.get_request(rid)["disposition_name"] == "denied"
        with pytest.raises(Conflict) as ei:
            c.issue(rid)  # a denied request cannot be issued, only resubmitted
        assert ei.value.hresult == CERTSRV_E_BAD_REQUESTSTATUS
        assert c.get_request(rid)["disposition_name"] == "denied"  # refusal changed nothing
        assert c.resubmit(rid)["disposition_name"] == "issued"
        assert c.get_request(rid)["disposition_name"] == "issued"


def test_revoke_hold_unrevoke_and_crl(service: Service) -> None:
    with service.client() as c:
        rid = c.submit(make_csr("r.example.com"))["request_id"]
        serial = c.issue(rid)["serial"]
        held = c.revoke(serial, "certificateHold")
        assert held["disposition_name"] == "revoked" and held["revocation_reason"] == 6
        crl = c.publish_crl()
        on_disk = x509.load_der_x509_crl((service.home.publish_dir / "ca.crl").read_bytes())
        assert on_disk.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
        assert crl["number"] == on_disk.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert c.unrevoke(serial)["disposition_name"] == "issued"
        c.publish_crl()
        on_disk = x509.load_der_x509_crl((service.home.publish_dir / "ca.crl").read_bytes())
        assert on_disk.get_revoked_certificate_by_serial_number(int(serial, 16)) is None
        final = c.revoke(serial.lower(), 1, "2020-01-02T03:04:05+00:00")
        assert final["revocation_reason"] == 1 and final["invalidity_date"] == "2020-01-02T03:04:05Z"
        assert c.view(serial=serial)[0]["disposition_name"] == "revoked"


def test_view_filters_and_paging(service: Service) -> None:
    with service.client() as c:
        ids = [c.submit(make_csr(f"v{i}.example.com"))["request_id"] for i in range(5)]
        pending = [r["request_id"] for r in c.view(disposition="pending", limit=1000)]
        assert set(ids) <= set(pending)
        assert [r["request_id"] for r in c.view(disposition=9, limit=1000)] == pending
        everything = [r["request_id"] for r in c.view(limit=1000)]
        assert everything == sorted(everything)
        page1 = c.view(limit=2, offset=0)
        page2 = c.view(limit=2, offset=2)
        assert [r["request_id"] for r in page1 + page2] == everything[:4]
        assert [r["request_id"] for r in c.view(request_id=ids[2])] == [ids[2]]
        assert c.view(offset=10**6) == []
        for bad in ({"disposition": "bogus"}, {"limit": "0"}, {"limit": "x"}, {"offset": "-1"},
                    {"expired": "maybe"}, {"serial": "xyz"}, {"nonsense": "1"}):
            with pytest.raises(InvalidArgument) as ei:
                c.call("GET", "/ca/requests", params=bad)
            assert ei.value.hresult == E_INVALIDARG, bad


def test_malformed_input_is_a_clear_4xx(service: Service) -> None:
    with service.client() as c:
        before = c.view(limit=1000)
    with _raw(service) as h:
        cases = [
            (b"{not json", "malformed JSON"),
            (b"[1, 2]", "JSON object"),
            (b"{}", "'csr'"),
            (b'{"csr": 5}', "'csr'"),
            (b'{"csr": "x", "extra": 1}', "'extra'"),
            (b'{"csr": "!!!notbase64"}', "PEM"),
            (b"", "body is required"),
        ]
        for body, needle in cases:
            r = h.post("/ca/requests", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            j = r.json()
            assert j["hresult"] == E_INVALIDARG and j["name"] == "E_INVALIDARG" and j["error"] == "InvalidArgument"
            assert needle in j["message"], (body, j)
            assert "Traceback" not in r.text
        # A well-formed but bogus CSR: the CA's verdict, still a 4xx with an HRESULT.
        r = h.post("/ca/requests", json={"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END "
                                                "CERTIFICATE REQUEST-----\n"})
        assert 400 <= r.status_code < 500 and r.json()["hresult"] > 0x80000000
        r = h.get("/no/such/endpoint")
        assert r.status_code == 404 and r.json()["error"] == "NotFound"
        r = h.delete("/ca/requests")
        assert r.status_code == 405 and r.json()["error"] == "InvalidArgument"
        r = h.get("/ca/requests/abc")
        assert r.status_code == 400 and "positive integer" in r.json()["message"]
        r = h.get("/ca/requests/99999999999999999999999")
        assert r.status_code == 400
        r = h.post("/ca/certificates/nothex/revoke", json={})
        assert r.status_code == 400
        r = h.post("/ca/certificates/ABCDEF/revoke", json={"reason": "keyCompromise",
                                                            "invalidity_date": "yesterday"})
        assert r.status_code == 400 and "ISO 8601" in r.json()["message"]
    with service.client() as c:
        with pytest.raises(NotFound) as ei:
            c.issue(10**9)
        assert ei.value.hresult == CERTSRV_E_NO_REQUEST
        assert c.view(limit=1000) == before  # nothing above changed the database


def test_body_over_limit_refused_before_read(service: Service) -> None:
    # Content-Length says 2 MiB; we send only the headers and 10 bytes: the answer must come anyway.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(service.socket))
    s.sendall(b"POST /ca/requests HTTP/1.1\r\nHost: certsrv\r\nContent-Type: application/json\r\n"
              b"Content-Length: 2097152\r\n\r\n{\"csr\": \"")
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    j = json.loads(body)
    assert j["hresult"] == E_INVALIDARG and "max_body" in j["message"]
    # Chunked (no Content-Length): refused once the limit is crossed, also as JSON.
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"csr": "'
        for _ in range(40):
            yield b"A" * 65536
        yield b'"}'

    with _raw(service) as h:
        r = h.post("/ca/requests", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "InvalidArgument"
    with service.client() as c:
        assert c.is_server_online()


def test_server_control_flags(service: Service) -> None:
    with service.client() as c:
        c.server_control(2)  # spec §4.1: 2 and 3 succeed doing nothing
        c.server_control(3)
        for bad in (0, 4, 7, 0xFFFFFFFF):
            with pytest.raises(InvalidArgument) as ei:
                c.server_control(bad)
            assert ei.value.hresult == E_INVALIDARG
        assert c.call("POST", "/control", json={"flags": 2}) == {"flags": 2, "action": "none", "out": None}
        with pytest.raises(InvalidArgument):
            c.call("POST", "/control", json={"flags": "1"})  # strict: a string is not a flag
        assert c.is_server_online() is True
        assert c.status()["state"] == "running"


def test_status_names_caller_roles_and_recovery(service: Service) -> None:
    import os

    with service.client() as c:
        st = c.status()
    assert st["name"] == "Service Test CA" and st["online"] is True
    assert st["listeners"] == [f"unix:{service.socket}"]
    # The home directory's owner is Administrator and Operator by default.
    assert os.stat(service.home.root).st_uid == os.getuid()
    assert st["caller"]["roles"] == ["Administrator", "Operator"]
    assert st["recovery"]["kind"] == "soft"
    assert st["crl_published"] is not None  # no CRL existed: published before serving
    assert service.socket.stat().st_mode & 0o777 == 0o600  # owner only without service.socket_group (issue 9)


def test_openapi_document_describes_every_route(service: Service) -> None:
    with _raw(service) as h:
        doc = h.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p): o for p, item in doc["paths"].items() for m, o in item.items()}
    expected = {
        ("POST", "/ca/requests"): ["Administrator", "Enrollee", "Officer"],
        ("GET", "/ca/requests"): ["Administrator", "Auditor", "Officer"],
        ("GET", "/ca/requests/{request_id}"): ["Administrator", "Auditor", "Enrollee", "Officer"],
        ("GET", "/ca/requests/{request_id}/certificate"): ["Administrator", "Auditor", "Enrollee", "Officer"],
        ("POST", "/ca/requests/{request_id}/issue"): ["Administrator", "Officer"],
        ("POST", "/ca/requests/{request_id}/deny"): ["Administrator", "Officer"],
        ("POST", "/ca/requests/{request_id}/resubmit"): ["Administrator", "Officer"],
        ("GET", "/ca/certificates/{serial}"): ["Administrator", "Auditor", "Enrollee", "Officer"],
        ("POST", "/ca/certificates/{serial}/revoke"): ["Administrator", "Officer"],
        ("POST", "/ca/certificates/{serial}/unrevoke"): ["Administrator", "Officer"],
        ("POST", "/ca/crl"): ["Administrator", "Officer"],
        ("POST", "/control"): ["Administrator", "Operator"],
        ("GET", "/status"): ["Administrator", "Auditor", "Enrollee", "Officer", "Operator"],
        ("GET", "/online"): None,
        ("GET", "/openapi.json"): None,
        ("GET", "/ca"): None,
    }
    for key, roles in expected.items():
        assert key in ops, key
        assert ops[key]["x-roles"] == roles, key
        assert "Roles:" in ops[key]["description"]
        assert "403" in ops[key]["responses"] or roles is None
    # Every documented path is routed (no 404 "no such endpoint" for a documented operation).
    with _raw(service) as h:
        for (method, path), _ in ops.items():
            if method != "GET" or path.startswith("/backup"):
                continue
            url = path.replace("{request_id}", "1").replace("{serial}", "AB")
            r = h.get(url)
            assert not (r.status_code == 404 and "no such endpoint" in r.text), url


def test_audit_log_records_who_what_when_outcome(service: Service) -> None:
    import os

    with service.client() as c:
        rid = c.submit(make_csr("audit.example.com"))["request_id"]
        c.issue(rid)
        with pytest.raises(Conflict):
            c.issue(rid)
        c.server_control(2)
    recs = audit.read(service.home.audit_log)
    mine = [r for r in recs if r.get("details", {}).get("request_id") == rid]
    assert [(r["operation"], r["outcome"]) for r in mine][-3:] == [("submit", "ok"), ("issue", "ok"),
                                                                  ("issue", "error")]
    assert all(r["who"] == f"uid:{os.getuid()}" and r["kind"] == "unix" and r["time"] for r in mine)
    assert mine[-1]["hresult"] == f"0x{CERTSRV_E_BAD_REQUESTSTATUS:08X}" and mine[-1]["status"] == 409
    ctl = [r for r in recs if r["operation"] == "server_control"]
    assert ctl and ctl[-1]["details"] == {"flags": 2}
    assert not any(r["operation"] in ("online", "openapi") for r in recs)
    assert E_ACCESSDENIED  # (refusals are audited as "denied": see test_tls_roles)


@pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")
def test_serial_with_a_first_byte_below_0x10_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #10 finding 8: a serial whose first byte is < 0x10 is printed with its leading zero ("0A...").
    The serial is pinned (in-process service, random_serial patched) so this case runs every time."""
    import asyncio
    import threading
    from typing import Any

    from pycertsrv.ca import Authority, enroll
    from pycertsrv.client import Client
    from pycertsrv.errors import Unavailable
    from pycertsrv.service import run_app
    from support import make_home

    pinned = 0x0A_1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D  # 20 octets, first byte 0x0A
    monkeypatch.setattr(enroll, "random_serial", lambda: pinned)  # a new request's serial
    home = make_home(tmp_path / "H")
    a = Authority.open(home.root)
    sock = tmp_path / "s.sock"
    apps: list[Any] = []
    t = threading.Thread(target=asyncio.run, args=(run_app(a, socket_override=sock, on_ready=apps.append),))
    t.start()
    try:
        with Client(f"unix:{sock}") as c:
            for _ in range(600):
                with contextlib.suppress(Unavailable):
                    if c.is_server_online():
                        break
                threading.Event().wait(0.05)
            issued = c.submit(make_csr("low.example.com"))
            assert issued["serial"] == serial_hex(pinned) and issued["serial"].startswith("0A")
            der = c.get_certificate(issued["serial"])  # looked up by the printed form, re-read from the service
            assert x509.load_der_x509_certificate(der).serial_number == pinned
            assert c.view(serial=pinned)[0]["serial"] == issued["serial"]
    finally:
        if apps:
            apps[0]["state"].request_stop("test teardown")
        t.join(60)
        a.close()
    _openssl_verify_file(tmp_path, home.root / "publish" / "ca.crt", der)


def _openssl_verify_file(tmp_path: Path, cafile: Path, der: bytes) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    p = tmp_path / "pinned.pem"
    p.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
    r = subprocess.run(["openssl", "verify", "-CAfile", str(cafile), str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
