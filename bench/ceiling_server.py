"""The throughput ceiling of ANY issuer written in CPython with ``cryptography`` on this machine (issue 15):
a bare HTTP/1.1 issuer that does only what no CA may skip, and nothing a real CA must also do.

Per request it parses the HTTP head (by hand: no framework), decodes the JSON body, parses the PEM request,
verifies its signature (RFC 2986 §3: proof of possession), reads its SAN, builds and signs a certificate with
the same profile as ``certsrv``'s ``server`` template (basicConstraints, keyUsage, EKU serverAuth, SKI, AKI,
SAN; EC P-256 CA, SHA-256) and answers the PEM in JSON. No storage, no fsync, no policy, no roles, no audit,
no serial check. ``NPROC`` processes accept on one listening socket (one per core), so it uses every core.

``service_bench`` drives it with the same load generator as ``certsrv serve`` and ``cfssl serve``: its rate
against cfssl's bounds what ``certsrv serve`` could reach with free storage, free policy and a free HTTP
framework. Run: ``python -m bench.ceiling_server (unix:PATH | tcp:PORT) NPROC``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

_KEY = ec.generate_private_key(ec.SECP256R1())
_ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ceiling CA")])
_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
_FIXED = [
    x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)),
    x509.Extension(ExtensionOID.KEY_USAGE, True, x509.KeyUsage(True, False, False, False, False, False, False,
                                                               False, False)),
    x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                   x509.AuthorityKeyIdentifier.from_issuer_public_key(_KEY.public_key())),
    x509.Extension(ExtensionOID.EXTENDED_KEY_USAGE, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
]


def issue(pem: bytes) -> bytes:
    """The PEM certificate for the PEM request ``pem`` (ValueError when its signature does not verify)."""
    csr = x509.load_pem_x509_csr(pem)
    if not csr.is_signature_valid:
        raise ValueError("bad request signature")
    pub = csr.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    exts = [x509.Extension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, x509.SubjectKeyIdentifier.from_public_key(pub)),
            *_FIXED, x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, san)]
    cert = (x509.CertificateBuilder(extensions=exts).subject_name(csr.subject).issuer_name(_ISSUER).public_key(pub)
            .serial_number(x509.random_serial_number()).not_valid_before(_NOW)
            .not_valid_after(_NOW + dt.timedelta(days=365)).sign(_KEY, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: requests with a Content-Length body, answered in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
            try:
                out = json.dumps({"certificate": issue(json.loads(body)["csr"].encode()).decode()}).encode()
                status = b"200 OK"
            except (ValueError, KeyError) as e:
                out, status = json.dumps({"error": str(e)}).encode(), b"400 Bad Request"
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % (status, len(out)) + out)


def _serve(sock: socket.socket) -> None:
    loop = asyncio.new_event_loop()
    if sock.family == socket.AF_UNIX:
        loop.run_until_complete(loop.create_unix_server(_Conn, sock=sock))
    else:
        loop.run_until_complete(loop.create_server(_Conn, sock=sock))
    loop.run_forever()


def main(argv: list[str]) -> int:
    """Listen on ``argv[0]`` (``unix:PATH`` or ``tcp:PORT`` on 127.0.0.1) with ``argv[1]`` processes."""
    where, nproc = argv[0], int(argv[1])
    if where.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where[5:])
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(where.removeprefix("tcp:"))))
    sock.listen(256)
    children = []
    for _ in range(nproc - 1):
        pid = os.fork()
        if pid == 0:
            _serve(sock)
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    _serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
