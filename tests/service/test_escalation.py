"""Issue 9, finding 1, end to end on the real service: Enrollee -> CA certificate -> client certificate
``CN=ops`` -> Operator backup session. The chain no longer completes.

Set-up as in the report: ``client_ca`` trusts the CA's own chain (so certificates it issues log in over TLS),
``cert-subject:CN=ops`` is Operator, and a second local account (made with useradd) is Enrollee only.
The account talks to the service over its Unix socket (SO_PEERCRED names it), from a forked child that has
become that uid.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.errors import CERTSRV_E_TEMPLATE_DENIED, E_ACCESSDENIED, CertSrvError
from support import Service, as_uid, make_home

from .helpers import TLSMaterial

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to make and become another uid")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_csr(key: Any, cn: str, ca: bool = False) -> str:
    b = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    if ca:  # what the attacker asked for: a CA certificate
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _sign_client(issuer_key: Any, issuer: x509.Name, subject_key: Any, cn: str) -> x509.Certificate:
    """What the attacker does with whatever it holds: sign itself a TLS client certificate ``cn``."""
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer)
            .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer_key, hashes.SHA256()))


@pytest.fixture()
def enrollee_uid() -> Iterator[int]:
    """A second local account, made for this test and removed after it."""
    name = f"ce{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


def test_enrollee_cannot_reach_operator_through_a_ca_certificate(tmp_path: Path, enrollee_uid: int) -> None:
    uid = enrollee_uid
    tls = TLSMaterial(tmp_path / "tls")
    sockdir = Path(tempfile.mkdtemp(prefix="certsrv-esc-"))  # reachable by the other uid
    sockdir.chmod(0o755)
    bundle = tmp_path / "client-ca.pem"
    home = make_home(tmp_path / "H", roles=[("cert-subject:CN=ops", ["Operator"]), (f"uid:{uid}", ["Enrollee"])],
                     socket=str(sockdir / "s.sock"), socket_mode=0o666, tcp_host="127.0.0.1", tcp_port=0,
                     tls_cert=str(tls.dir / "server.pem"), tls_key=str(tls.dir / "server.key"),
                     client_ca=str(bundle))
    # client_ca trusts the CA's own chain: what made the escalation possible.
    bundle.write_bytes(tls.cafile.read_bytes() + (home.root / "publish" / "ca.crt").read_bytes())
    svc = Service(home).start()
    try:
        # Control: the grant itself works. The owner (Administrator) may issue CN=ops, and that certificate
        # logs in as Operator and opens a backup session. So what stops the attacker below is the policy.
        ops_key = ec.generate_private_key(ec.SECP256R1())
        with svc.client() as admin:
            ops = admin.submit(_pem_csr(ops_key, "ops"), template="client")
        assert ops["disposition_name"] == "issued"
        (tmp_path / "ops.pem").write_text(ops["certificate_pem"])
        (tmp_path / "ops.key").write_bytes(_key_pem(ops_key))
        with Client(svc.tls_address, cert=tmp_path / "ops.pem", key=tmp_path / "ops.key",  # type: ignore[arg-type]
                    cafile=tls.cafile) as c:
            assert c.status()["caller"]["roles"] == ["Operator"]
            with c.backup("full") as session:
                assert session.database_names()

        # The attack, as the Enrollee account over the Unix socket.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        want_ca = _pem_csr(ca_key, "Mallory CA", ca=True)
        own_key = ec.generate_private_key(ec.SECP256R1())
        want_ops = _pem_csr(own_key, "ops")
        own = _pem_csr(own_key, "mallory")

        def attack(c: Client) -> dict[str, Any]:
            out: dict[str, Any] = {"roles": c.status()["caller"]["roles"]}
            for label, kw in (("by --template", {"template": "subordinate"}),
                              ("by attribute", {"attributes": {"CertificateTemplate": "subordinate"}}),
                              ("CN=ops", {"template": "client"})):
                try:
                    out[label] = c.submit(want_ops if label == "CN=ops" else want_ca, **kw)
                except CertSrvError as e:
                    out[label] = {"hresult": e.hresult, "text": str(e)}
            out["own"] = c.submit(own, template="client")  # an Enrollee still enrolls for itself
            return out

        out = as_uid(svc.socket, uid, uid, attack)
        assert "error" not in out, out.get("error")
        assert out["roles"] == ["Enrollee"]
        for label in ("by --template", "by attribute"):
            assert out[label]["hresult"] == CERTSRV_E_TEMPLATE_DENIED, out[label]
            assert f"uid:{uid} (Enrollee) may not enroll with CA template 'subordinate'" in out[label]["text"]
            assert "\n" not in out[label]["text"]
        assert out["CN=ops"]["hresult"] == E_ACCESSDENIED
        assert "'CN=ops' is granted Operator by [[roles]] 'cert-subject:CN=ops'" in out["CN=ops"]["text"]
        assert out["own"]["disposition_name"] == "issued"

        # The rest of the chain needs a CA certificate the Enrollee does not have. What it holds signs
        # nothing the service accepts: neither its own end-entity certificate nor a CA of its own making.
        mallory = x509.load_pem_x509_certificate(out["own"]["certificate_pem"].encode())
        forged_key = ec.generate_private_key(ec.SECP256R1())
        self_ca = ec.generate_private_key(ec.SECP256R1())
        for label, issuer_key, issuer, extra in (
            ("signed by the Enrollee's own certificate", own_key, mallory.subject, [mallory]),
            ("signed by a CA of its own", self_ca, _name("Mallory CA"), []),
        ):
            forged = _sign_client(issuer_key, issuer, forged_key, "ops")
            chain = b"".join(x.public_bytes(serialization.Encoding.PEM) for x in [forged, *extra])
            (tmp_path / "forged.pem").write_bytes(chain)
            (tmp_path / "forged.key").write_bytes(_key_pem(forged_key))
            with Client(svc.tls_address, cert=tmp_path / "forged.pem",  # type: ignore[arg-type]
                        key=tmp_path / "forged.key", cafile=tls.cafile, timeout=10) as c, \
                    pytest.raises(CertSrvError):
                c.backup("full")
            assert svc.proc is not None and svc.proc.poll() is None, label
    finally:
        svc.ensure_stopped()
        shutil.rmtree(sockdir, ignore_errors=True)

    # The database, re-read from disk: two certificates (ops by the owner, mallory), no CA certificate,
    # and nothing at all recorded for the refused requests.
    with Authority.open(home.root) as a:
        rows = a.view(limit=None)
        assert [(r.requester, r.template, r.disposition_name, r.subject) for r in rows] == [
            ("uid:0", "client", "issued", "CN=ops"),
            (f"uid:{uid}", "client", "issued", "CN=mallory"),
        ]
        for r in rows:
            cert = x509.load_der_x509_certificate(a.get_certificate(r.request_id))
            assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
