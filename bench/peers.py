"""The peers the service bench compares against, set up the same way each run: a throw-away EC P-256 CA for
``cfssl serve`` and for ``openssl ca``, TLS material for the service's TCP listener, and the running of
``openssl ca`` one process per certificate (its index file forbids running two at once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CFSSL_INSTALL = ("apt-get install -y golang-cfssl (Debian/Ubuntu), "
                 "or go install github.com/cloudflare/cfssl/cmd/cfssl@latest")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(d: Path, cn: str) -> tuple[Path, Path, Any, x509.Certificate]:
    """An EC P-256 root (cert and unencrypted key PEM files in ``d``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / "ca.pem", d / "ca-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path, key, cert


def leaf(d: Path, stem: str, ca_key: Any, ca_cert: x509.Certificate, cn: str, *, server: bool) -> tuple[Path, Path]:
    """A TLS server (127.0.0.1) or client certificate signed by the CA; PEM files ``stem.pem``/``stem.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        import ipaddress

        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cp, kp = d / f"{stem}.pem", d / f"{stem}.key"
    cp.write_bytes(cert.public_bytes(Encoding.PEM))
    kp.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cp, kp


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def cfssl_binary() -> str | None:
    """``cfssl`` on PATH, if installed."""
    return shutil.which("cfssl")


def start_cfssl(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``cfssl serve`` with a fresh EC P-256 CA (it keeps nothing durable: no database configured)."""
    cert, key, _, _ = make_ca(d, "cfssl bench CA")
    port = free_port()
    proc = subprocess.Popen([cfssl_binary() or "cfssl", "serve", "-ca", str(cert), "-ca-key", str(key),
                             "-address", "127.0.0.1", "-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "cfssl.log", "wb"))  # noqa: SIM115
    wait_port(port, proc)
    return proc, port


_OPENSSL_CNF = """\
[ ca ]
default_ca = bench
[ bench ]
dir = {d}
database = {d}/index.txt
serial = {d}/serial
new_certs_dir = {d}/newcerts
certificate = {d}/ca.pem
private_key = {d}/ca-key.pem
default_md = sha256
default_days = 365
policy = anything
unique_subject = no
copy_extensions = copy
x509_extensions = leaf
[ anything ]
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def run_openssl_ca(d: Path, csr_pems: list[bytes]) -> dict[str, Any]:
    """``openssl ca`` once per request, one after another (its text index allows one writer); rate, p99 and
    the peak memory of one process."""
    make_ca(d, "openssl bench CA")
    (d / "newcerts").mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    cnf = d / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF.format(d=d))
    lat: list[float] = []
    failed = 0
    failures: list[str] = []
    t0 = time.perf_counter()
    for i, pem in enumerate(csr_pems):
        req, out = d / "req.pem", d / f"c{i}.pem"
        req.write_bytes(pem)
        s = time.perf_counter()
        with open(d / "err.txt", "wb") as err:
            p = subprocess.run(["openssl", "ca", "-batch", "-notext", "-rand_serial", "-config", str(cnf), "-in",
                                str(req), "-out", str(out)], stdout=subprocess.DEVNULL, stderr=err)
        lat.append(time.perf_counter() - s)
        if p.returncode != 0 or not out.exists() or b"BEGIN CERTIFICATE" not in out.read_bytes():
            failed += 1
            failures.append((d / "err.txt").read_text(errors="replace").strip()[-300:])
    elapsed = time.perf_counter() - t0
    lat.sort()
    # One more, for its peak memory: GNU time reads it with wait4 (our own wait4 would count the Python
    # process it was forked from, since ru_maxrss survives execve).
    peak = 0
    if shutil.which("time") or Path("/usr/bin/time").exists():
        (d / "peak").unlink(missing_ok=True)
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(d / "peak"), "openssl", "ca", "-batch", "-notext",
                        "-rand_serial", "-config", str(cnf), "-in", str(d / "req.pem"), "-out", str(d / "last.pem")],
                       capture_output=True)
        with contextlib.suppress(OSError, ValueError):
            peak = int((d / "peak").read_text().split()[-1])
    return {"clients": 1, "n": len(csr_pems), "ok": len(csr_pems) - failed, "failed": failed,
            "rate": round((len(csr_pems) - failed) / elapsed, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
            "p99_ms": round(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1e3, 2),
            "rss_kib": peak, "failures": failures[:3]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the service's workers)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of one process (KiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
