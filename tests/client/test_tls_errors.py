"""Issue #10 finding 7: TLS failures named as what they are, not "server unavailable".

A real TLS service (trustme certificates); the real CLI (``certsrv status --server HOST:PORT``) prints one
line with the Windows trust HRESULT: an expired client certificate (CERT_E_EXPIRED 0x800B0101), a service
certificate from an anchor we do not trust (CERT_E_UNTRUSTEDROOT 0x800B0109), a service certificate for
another name (CERT_E_CN_NO_MATCH 0x800B010F).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from service.helpers import ClientCreds, TLSMaterial  # tests/ is on sys.path
from support import Service, make_home


@dataclass
class Env:
    svc: Service
    tls: TLSMaterial
    port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("tlserr")
    tls = TLSMaterial(d / "tls")
    # The service's certificate names "localhost" only: reaching it as 127.0.0.1 is a name mismatch.
    server = tls.ca.issue_cert("localhost")
    server.private_key_pem.write_to_path(str(tls.dir / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tls.dir / "server.pem"))
    good = tls.client("admin")
    home = make_home(d / "H", roles=[(f"cert-subject:{good.subject}", ["Administrator"])],
                     tcp_host="127.0.0.1", tcp_port=0, **tls.service_config())
    svc = Service(home).start()
    assert svc.tls_address is not None
    yield Env(svc, tls, int(svc.tls_address.rpartition(":")[2]))
    svc.ensure_stopped()
    assert "Traceback" not in svc.log()


def status(server: str, creds: ClientCreds, cafile: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTSRV_")}
    cmd = [sys.executable, "-m", "pycertsrv.cli", "status", "--server", server, "--cert", str(creds.cert),
           "--key", str(creds.key), "--cafile", str(cafile or creds.cafile)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "RPC_S_SERVER_UNAVAILABLE" not in r.stderr and "does not answer" not in r.stderr
    return r.stderr.strip()


def test_the_good_client_gets_in(env: Env) -> None:
    """The control: the same service, a valid certificate, the right name and anchor."""
    r = status(f"localhost:{env.port}", env.tls.clients["admin"])
    assert r.returncode == 0, r.stderr


def test_expired_client_certificate(env: Env) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    leaf = env.tls.ca.issue_cert("expired.clients.example", common_name="admin",
                                 not_before=past - dt.timedelta(days=30), not_after=past)
    cert, key = env.tls.dir / "expired.pem", env.tls.dir / "expired.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    creds = ClientCreds(cert, key, env.tls.cafile, "CN=admin", "")
    line = one_line(status(f"localhost:{env.port}", creds))
    assert line.startswith(f"certsrv: localhost:{env.port}: 0x800B0101 CERT_E_EXPIRED: "), line
    assert "refused our TLS client certificate: it has expired" in line and str(cert) in line
    assert "renew the client certificate" in line


def test_untrusted_server_certificate(env: Env, tmp_path: Path) -> None:
    stranger = trustme.CA()
    anchor = tmp_path / "stranger.pem"
    stranger.cert_pem.write_to_path(str(anchor))
    line = one_line(status(f"localhost:{env.port}", env.tls.clients["admin"], cafile=anchor))
    assert line.startswith(f"certsrv: localhost:{env.port}: 0x800B0109 CERT_E_UNTRUSTEDROOT: "), line
    assert "the service's TLS certificate is not trusted" in line and "--cafile" in line


def test_server_certificate_for_another_name(env: Env) -> None:
    line = one_line(status(f"127.0.0.1:{env.port}", env.tls.clients["admin"]))
    assert line.startswith(f"certsrv: 127.0.0.1:{env.port}: 0x800B010F CERT_E_CN_NO_MATCH: "), line
    assert "does not name this address" in line and "connect with a name the certificate carries" in line
