"""Shared helpers for the service and client tests: CA homes, CSRs, the real service in a subprocess,
trustme TLS material mapped to roles."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.config import RoleGrant
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home

_KEY = ec.generate_private_key(ec.SECP256R1())


def make_csr(cn: str = "host.example.com", *, pem: bool = True) -> bytes:
    """A PKCS#10 request for ``cn`` (one EC key reused: the CA does not care, and keygen is not under test)."""
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    csr = b.sign(_KEY, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


def make_home(root: Path, name: str = "Service Test CA", *, pending: bool = False,
              roles: list[tuple[str, list[str]]] | None = None, **service: Any) -> Home:
    """A fresh CA home at ``root`` with optional role grants and ``[service]`` overrides."""
    Authority.init(root, name, policy={"mode": "pending"} if pending else None).close()
    home = Home.at(root)
    cfg = config_mod.load(home.root)
    updates: dict[str, Any] = {}
    if service:
        updates["service"] = cfg.service.model_copy(update=service)
    if roles:
        updates["roles"] = [RoleGrant(principal=p, roles=r) for p, r in roles]  # type: ignore[arg-type]
    if updates:
        cfg = cfg.model_copy(update=updates)
    config_mod.save(home.root, cfg)
    return home


class Service:
    """The real service (``python -m pycertsrv.cli serve``) in a subprocess.

    :param home: the CA home.
    :param tcp: ``HOST:PORT`` for the TLS listener (port 0 = any free port; read back from status).
    :param env: extra environment variables for the child (e.g. ``LD_PRELOAD`` of a fault injector).
    :param log_path: where its stderr goes (default: beside the home).
    """

    def __init__(self, home: Home, *, tcp: str | None = None, socket: Path | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.home = home
        self.env = dict(env or {})
        self.tcp = tcp
        self.socket_override = socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or home.root.parent / f"{home.root.name}-service.log"
        self.tls_address: str | None = None

    @property
    def socket(self) -> Path:
        """The Unix socket path."""
        if self.socket_override is not None:
            return self.socket_override
        s = Path(config_mod.load(self.home.root).service.socket)
        return s if s.is_absolute() else self.home.root / s

    def start(self, timeout: float = 60.0, wait: bool = True) -> Service:
        """Start it; with ``wait``, until it answers IsServerOnline = True."""
        args = [sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(self.home.root)]
        if self.tcp:
            args += ["--tcp", self.tcp]
        if self.socket_override is not None:
            args += ["--socket", str(self.socket_override)]
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        env = dict(os.environ)
        env.pop("CERTSRV_HOME", None)
        env.update(self.env)
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until the service answers (or fail with its log)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n{self.log()}")
            try:
                with Client(f"unix:{self.socket}", timeout=5) as c:
                    if c.is_server_online():
                        st = c.status()
                        tcp = [x for x in st["listeners"] if not x.startswith("unix:")]
                        self.tls_address = tcp[0] if tcp else None
                        return
            except CertSrvError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service did not come up in {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def client(self, **kw: Any) -> Client:
        """A client over the Unix socket."""
        return Client(f"unix:{self.socket}", **kw)

    def tls_client(self, creds: ClientCreds | None, **kw: Any) -> Client:
        """A client over TLS with ``creds`` (None: no client certificate)."""
        assert self.tls_address is not None
        if creds is None:
            return Client(self.tls_address, cafile=kw.pop("cafile"), **kw)
        return Client(self.tls_address, cert=creds.cert, key=creds.key, cafile=creds.cafile, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not stop on signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def ensure_stopped(self) -> None:
        """Teardown: stop it whatever state it is in."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop(timeout=30)
            if self.proc.poll() is None:
                self.kill()

    def log(self) -> str:
        """The service's stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class ClientCreds:
    """A TLS client certificate and key in files, plus the server trust anchor."""

    cert: Path
    key: Path
    cafile: Path
    subject: str
    sha256: str


@dataclass
class TLSMaterial:
    """trustme CAs and certificates written to ``dir``: the service's, and one client cert per name."""

    dir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    other_ca: trustme.CA = field(default_factory=trustme.CA)
    clients: dict[str, ClientCreds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_pem.write_to_path(str(self.dir / "server.key"))
        server.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
        self.ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))

    @property
    def cafile(self) -> Path:
        """The trust anchor (server and client certificates chain to it)."""
        return self.dir / "ca.pem"

    def client(self, name: str, *, untrusted: bool = False) -> ClientCreds:
        """A client certificate ``CN=name`` from the trusted CA (or from another CA)."""
        ca = self.other_ca if untrusted else self.ca
        leaf = ca.issue_cert(f"{name}.clients.example", common_name=name)
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        leaf.private_key_pem.write_to_path(str(key_path))
        c = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        creds = ClientCreds(cert_path, key_path, self.cafile, c.subject.rfc4514_string(),
                            c.fingerprint(hashes.SHA256()).hex())
        self.clients[name] = creds
        return creds

    def service_config(self) -> dict[str, Any]:
        """``[service]`` settings for a TLS listener with these files."""
        return {"tls_cert": str(self.dir / "server.pem"), "tls_key": str(self.dir / "server.key"),
                "client_ca": str(self.cafile)}


def db_state(client: Client, home: Home) -> tuple[str, bytes | None]:
    """Everything a refused call could have changed: every request row (via the service) and the published CRL."""
    rows = client.view(limit=1000)
    crl = home.publish_dir / "ca.crl"
    return json.dumps(rows, sort_keys=True), crl.read_bytes() if crl.exists() else None


def as_uid(sock: Path, uid: int, gid: int, work: Callable[[Client], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child that has become ``uid``/``gid``; its JSON result (or the traceback)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os-level calls and the already imported client
        out: dict[str, Any] = {}
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with Client(f"unix:{sock}") as c:
                out = work(c)
        except BaseException:
            import traceback

            out["error"] = traceback.format_exc()
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result
