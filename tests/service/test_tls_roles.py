"""Roles over TLS (trustme client certificates mapped in certsrv.toml) and over the Unix socket (SO_PEERCRED):
every endpoint as every role, as nobody, with an untrusted client certificate; refusals change nothing."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pycertsrv.client import Client
from pycertsrv.errors import E_ACCESSDENIED, AccessDenied, CertSrvError
from pycertsrv.service import audit
from support import Service, make_csr, make_home
from support import as_uid as _as_uid

from .helpers import ClientCreds, TLSMaterial, db_state

PRINCIPALS = {
    "admin": ["Administrator"],
    "officer": ["Officer"],
    "operator": ["Operator"],
    "auditor": ["Auditor"],
    "enrollee": ["Enrollee"],
    "enrollee2": ["Enrollee"],
}
NOBODY_UID = 65534


@dataclass
class Env:
    svc: Service
    tls: TLSMaterial
    creds: dict[str, ClientCreds]
    admin: Client
    sockdir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("tlsroles")
    tls = TLSMaterial(d / "tls")
    creds = {name: tls.client(name) for name in [*PRINCIPALS, "nobody", "bysha"]}
    creds["untrusted"] = tls.client("untrusted", untrusted=True)
    roles: list[tuple[str, list[str]]] = [(f"cert-subject:{creds[n].subject}", r) for n, r in PRINCIPALS.items()]
    roles.append((f"cert-sha256:{creds['bysha'].sha256.upper()}", ["Auditor"]))
    # The same subject as "untrusted" is granted: the chain check, not the name, must keep it out.
    roles.append((f"cert-subject:{creds['untrusted'].subject}", ["Administrator"]))
    roles += [(f"uid:{NOBODY_UID}", ["Auditor"]), (f"gid:{NOBODY_UID}", ["Enrollee"])]
    # A socket another uid can reach (pytest's tmp dirs are 0700), opened to everyone by socket_mode.
    sockdir = Path(tempfile.mkdtemp(prefix="certsrv-"))
    sockdir.chmod(0o755)
    home = make_home(d / "H", pending=True, roles=roles, socket=str(sockdir / "s.sock"), socket_mode=0o666,
                     tcp_host="127.0.0.1", tcp_port=0, **tls.service_config())
    svc = Service(home).start()
    assert svc.tls_address is not None and svc.tls_address.startswith("127.0.0.1:")
    admin = svc.tls_client(creds["admin"])
    yield Env(svc, tls, creds, admin, sockdir)
    admin.close()
    svc.ensure_stopped()
    shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- fixtures of work

def _pending(env: Env) -> int:
    return int(env.admin.submit(make_csr("pending.example.com"))["request_id"])


def _issued(env: Env) -> str:
    return str(env.admin.issue(_pending(env))["serial"])


def _held(env: Env) -> str:
    serial = _issued(env)
    env.admin.revoke(serial, "certificateHold")
    return serial


def _own(env: Env) -> tuple[int, str]:
    """A request submitted by 'enrollee' and issued by the admin."""
    with env.svc.tls_client(env.creds["enrollee"]) as c:
        rid = int(c.submit(make_csr("own.example.com"))["request_id"])
    return rid, str(env.admin.issue(rid)["serial"])


# Each case: (prepare(env) -> arg, call(client, arg), check(env, arg, result) re-reading state when allowed)
Case = tuple[Callable[[Env], Any], Callable[[Client, Any], Any], Callable[[Env, Any, Any], None] | None]


def _check_disp(name: str) -> Callable[[Env, Any, Any], None]:
    def check(env: Env, arg: Any, result: Any) -> None:
        rid = arg if isinstance(arg, int) else env.admin.view(serial=arg)[0]["request_id"]
        assert env.admin.get_request(rid)["disposition_name"] == name

    return check


def _check_crl(env: Env, arg: Any, result: Any) -> None:
    crl = x509.load_der_x509_crl((env.svc.home.publish_dir / "ca.crl").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == result["number"]


CASES: dict[str, Case] = {
    "submit": (lambda e: None, lambda c, a: c.submit(make_csr("new.example.com")),
               lambda e, a, r: e.admin.get_request(r["request_id"])["disposition_name"] == "pending" or None),
    "get_request": (lambda e: _own(e)[0], lambda c, a: c.get_request(a), None),
    "get_request_certificate": (lambda e: _own(e)[0], lambda c, a: c.get_certificate(a), None),
    "get_certificate": (lambda e: _own(e)[1], lambda c, a: c.get_certificate(a), None),
    "view": (lambda e: None, lambda c, a: c.view(limit=5), None),
    "issue": (_pending, lambda c, a: c.issue(a), _check_disp("issued")),
    "deny": (_pending, lambda c, a: c.deny(a), _check_disp("denied")),
    "resubmit": (_pending, lambda c, a: c.resubmit(a), _check_disp("issued")),
    "revoke": (_issued, lambda c, a: c.revoke(a, "superseded"), _check_disp("revoked")),
    "unrevoke": (_held, lambda c, a: c.unrevoke(a), _check_disp("issued")),
    "publish_crl": (lambda e: None, lambda c, a: c.publish_crl(), _check_crl),
    "server_control": (lambda e: None, lambda c, a: c.server_control(2), None),
    "status": (lambda e: None, lambda c, a: c.status(), None),
    "online": (lambda e: None, lambda c, a: c.is_server_online(), None),
    "openapi": (lambda e: None, lambda c, a: c.call("GET", "/openapi.json"), None),
    "ca_info": (lambda e: None, lambda c, a: c.ca_info(), None),
}

# The role table of the issue (AD CS): Administrator also holds the Officer's and the Auditor's rights.
ALL = {"Administrator", "Officer", "Operator", "Auditor", "Enrollee"}
OFFICERS = {"Administrator", "Officer"}
READERS = {"Administrator", "Officer", "Auditor"}
ALLOWED: dict[str, set[str] | None] = {
    "submit": {"Administrator", "Officer", "Enrollee"},
    "get_request": READERS | {"Enrollee"},  # Enrollee: its own request (prepared by _own)
    "get_request_certificate": READERS | {"Enrollee"},
    "get_certificate": READERS | {"Enrollee"},
    "view": READERS,
    "issue": OFFICERS, "deny": OFFICERS, "resubmit": OFFICERS, "revoke": OFFICERS, "unrevoke": OFFICERS,
    "publish_crl": OFFICERS,
    "server_control": {"Administrator", "Operator"},
    "status": ALL,
    "online": None, "openapi": None, "ca_info": None,  # anyone
}


def _denied_audited(env: Env, who: str, operation: str) -> bool:
    recs = audit.read(env.svc.home.audit_log)
    return any(r["who"] == who and r["operation"] == operation and r["outcome"] == "denied" and r["status"] == 403
               for r in recs)


@pytest.mark.parametrize("principal", [*PRINCIPALS, "nobody"])
def test_every_endpoint_as_role(env: Env, principal: str) -> None:
    roles = set(PRINCIPALS.get(principal, []))
    creds = env.creds[principal]
    with env.svc.tls_client(creds) as c:
        assert set(c.status()["caller"]["roles"]) == roles if roles else True
        for op, (prepare, call, check) in CASES.items():
            allowed = ALLOWED[op]
            ok = allowed is None or bool(roles & allowed)
            if principal == "enrollee2" and op.startswith("get_"):
                ok = False  # the prepared request is enrollee's: Enrollee reads only its own
            arg = prepare(env)
            before = db_state(env.admin, env.svc.home)
            if ok:
                result = call(c, arg)
                if check is not None:
                    check(env, arg, result)
            else:
                with pytest.raises(AccessDenied) as ei:
                    call(c, arg)
                assert ei.value.hresult == E_ACCESSDENIED, (principal, op)
                assert ei.value.name == "E_ACCESSDENIED"
                assert db_state(env.admin, env.svc.home) == before, (principal, op)  # nothing changed
                assert _denied_audited(env, f"cert-subject:{creds.subject}", op), (principal, op)


def test_enrollee_reads_only_its_own(env: Env) -> None:
    rid, serial = _own(env)
    before = db_state(env.admin, env.svc.home)
    with env.svc.tls_client(env.creds["enrollee2"]) as c:
        for call in (lambda: c.get_request(rid), lambda: c.get_certificate(rid), lambda: c.get_certificate(serial)):
            with pytest.raises(AccessDenied) as ei:
                call()
            assert "only its own" in ei.value.message
        mine = c.submit(make_csr("mine.example.com"))
        assert mine["requester"] == f"cert-subject:{env.creds['enrollee2'].subject}"
        assert c.get_request(mine["request_id"])["request_id"] == mine["request_id"]
    with env.svc.tls_client(env.creds["enrollee"]) as c:
        assert c.get_request(rid)["requester"] == f"cert-subject:{env.creds['enrollee'].subject}"
        assert x509.load_der_x509_certificate(c.get_certificate(serial)).serial_number == int(serial, 16)
    after = db_state(env.admin, env.svc.home)
    assert json.loads(after[0])[: len(json.loads(before[0]))] == json.loads(before[0])


@pytest.mark.parametrize("who", ["untrusted", "no-certificate"])
def test_untrusted_or_missing_client_certificate_is_refused(env: Env, who: str) -> None:
    before = db_state(env.admin, env.svc.home)
    if who == "untrusted":
        c = env.svc.tls_client(env.creds["untrusted"])
    else:
        c = env.svc.tls_client(None, cafile=env.tls.cafile)
    with c:
        for op, (prepare, call, _check) in CASES.items():
            if op in ("get_request", "get_request_certificate", "get_certificate", "issue", "deny", "resubmit",
                      "revoke", "unrevoke"):
                arg = prepare(env)
                before = db_state(env.admin, env.svc.home)
            else:
                arg = None
            with pytest.raises(AccessDenied) as ei:
                call(c, arg)
            assert ei.value.hresult == E_ACCESSDENIED, op
            assert "refused our TLS client certificate" in ei.value.message
            assert db_state(env.admin, env.svc.home) == before, op
    assert env.admin.is_server_online()  # the service is unharmed


def test_sha256_grant(env: Env) -> None:
    with env.svc.tls_client(env.creds["bysha"]) as c:
        st = c.status()
        assert st["caller"]["roles"] == ["Auditor"] and st["caller"]["cert_sha256"] == env.creds["bysha"].sha256
        c.view(limit=1)
        with pytest.raises(AccessDenied):
            c.publish_crl()


def test_tls_server_certificate_is_verified(env: Env, tmp_path: Path) -> None:
    # A client that trusts another anchor refuses the service (no silent plaintext or unverified TLS).
    other = TLSMaterial(tmp_path / "other")
    with Client(env.svc.tls_address, cert=env.creds["admin"].cert, key=env.creds["admin"].key,  # type: ignore[arg-type]
                cafile=other.cafile) as c, pytest.raises(CertSrvError) as ei:
        c.status()
    assert "CERTIFICATE_VERIFY_FAILED" in ei.value.message or "certificate verify failed" in ei.value.message


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another uid")
def test_unix_peer_credentials_map_uid_and_gid(env: Env) -> None:
    """A forked child becomes uid/gid 65534: its roles come from the uid:/gid: grants (SO_PEERCRED)."""
    csr = make_csr("nobody.example.com")

    def work(c: Client) -> dict[str, Any]:
        out: dict[str, Any] = {"caller": c.status()["caller"], "view": len(c.view(limit=1))}
        try:
            c.issue(1)
            out["issue"] = "allowed"
        except CertSrvError as e:
            out["issue"] = e.hresult
        out["submit"] = c.submit(csr)["requester"]
        return out

    out = _as_uid(env.svc.socket, NOBODY_UID, NOBODY_UID, work)
    assert "error" not in out, out
    assert out["caller"]["uid"] == NOBODY_UID and out["caller"]["kind"] == "unix"
    assert out["caller"]["roles"] == ["Auditor", "Enrollee"]
    assert out["view"] == 1
    assert out["issue"] == E_ACCESSDENIED
    assert out["submit"] == f"uid:{NOBODY_UID}"
    # The same caller as root (the home's owner) is Administrator + Operator.
    with env.svc.client() as c:
        assert c.status()["caller"]["roles"] == ["Administrator", "Operator"]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another uid")
def test_unix_caller_without_grant_has_no_role(env: Env) -> None:
    before = db_state(env.admin, env.svc.home)

    def work(c: Client) -> dict[str, Any]:
        out: dict[str, Any] = {"online": c.is_server_online()}
        for name, call in (("status", c.status), ("view", c.view), ("crl", c.publish_crl),
                           ("control", lambda: c.server_control(1))):
            try:
                call()
                out[name] = "allowed"
            except CertSrvError as e:
                out[name] = e.hresult
        return out

    out = _as_uid(env.svc.socket, 12345, 12345, work)
    assert out == {"online": True, "status": E_ACCESSDENIED, "view": E_ACCESSDENIED, "crl": E_ACCESSDENIED,
                   "control": E_ACCESSDENIED}, out
    assert db_state(env.admin, env.svc.home) == before
    assert env.admin.is_server_online()  # the refused shutdown did not stop it
    assert _denied_audited(env, "uid:12345", "server_control")
