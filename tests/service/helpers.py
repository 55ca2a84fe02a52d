"""Helpers for the service and client tests: trustme TLS material mapped to roles, and the state a refused call
must leave alone. Homes, CSRs, the service and a second uid are in ``tests/support.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pycertsrv.client import Client
from pycertsrv.home import Home


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
