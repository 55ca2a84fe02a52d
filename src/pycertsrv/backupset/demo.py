"""The backup-and-restore story of ``certsrv demo``, end to end on throw-away homes.

A CA is made and served (``certsrv serve`` in a subprocess); clients issue certificates while a full
backup streams over the service's socket; more certificates are issued; an incremental backup is
taken; the service stops; the full set and the incremental are restored into a new, empty home (a
replacement machine: configuration, key, published files and database come from the sets alone);
the restored CA starts (hard recovery before serving) and every certificate issued before the
incremental backup is fetched from it and verified with ``openssl verify`` against the restored CA
certificate. Finally the restored CA refuses an incremental backup until a full one is taken
(spec §2.17).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..errors import CertSrvError
from ..home import Home

PASSWORD = "demo backup password"


def _csr(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


class _Service:
    """``certsrv serve`` for one home, in a subprocess."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home.parent / f"{home.name}-service.log"

    def start(self, timeout: float = 60.0) -> None:
        from ..client import Client

        cmd = [sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(self.home), "--log-level", "warning"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CertSrvError(None, "demo", f"the service exited ({self.log.read_text()[-500:].strip()})")
            try:
                with Client(self.socket) as c:
                    if c.is_server_online():
                        return
            except CertSrvError:
                pass
            if time.monotonic() > deadline:
                raise CertSrvError(None, "demo", "the service did not come up")
            time.sleep(0.05)

    @property
    def socket(self) -> str:
        return f"unix:{self.home / 'certsrv.sock'}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _openssl_verify(ca_pem: Path, cert_der: bytes, work: Path) -> tuple[bool, str]:
    pem = work / "leaf.pem"
    cert = x509.load_der_x509_certificate(cert_der)
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    p = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(pem)], capture_output=True, text=True,
                       timeout=60)
    out = (p.stdout + p.stderr).strip().splitlines()
    return p.returncode == 0, out[-1] if out else ""


def run_demo(echo: Callable[[str], Any] = print, workdir: Path | None = None, *, load_threads: int = 3,
             before: int = 20, between: int = 10) -> dict[str, Any]:
    """Tell the backup/restore story through ``echo``; returns what happened (counts, checks, times).

    :param echo: where each line of the story goes.
    :param workdir: use this (new) directory instead of a temporary one (kept afterwards).
    :param load_threads: clients issuing concurrently while the full backup runs.
    :param before: certificates issued before the full backup starts.
    :param between: certificates issued between the full and the incremental backup.
    """
    from ..ca import Authority
    from ..client import Client
    from .restore_plan import plan_restore
    from .restore_run import run_restore
    from .writer import run_backup

    # Short paths: a Unix socket path is limited to 107 bytes.
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="csdemo", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    src_home, new_home = root / "ca", root / "new"
    result: dict[str, Any] = {"workdir": str(root)}
    t_start = time.monotonic()
    svc = _Service(src_home)
    issued: list[str] = []
    lock = threading.Lock()
    try:
        Authority.init(src_home, "pycertsrv Demo CA", key_type="ec-p256", days=365).close()
        echo(f"1. made a CA in {src_home}")
        svc.start()
        echo(f"2. certsrv serve is running ({svc.socket})")
        with Client(svc.socket) as c:
            for i in range(before):
                issued.append(c.submit(_csr(f"pre{i}.example.test"))["serial"])
        echo(f"3. issued {before} certificates")
        stop = threading.Event()
        errors: list[str] = []

        def load(n: int) -> None:
            with Client(svc.socket) as cl:
                i = 0
                while not stop.is_set():
                    try:
                        serial = cl.submit(_csr(f"load{n}-{i}.example.test"))["serial"]
                    except CertSrvError as e:
                        errors.append(str(e))
                        return
                    with lock:
                        issued.append(serial)
                    i += 1

        threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(load_threads)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with Client(svc.socket) as c:
            full = run_backup(c, root / "full", password=PASSWORD, home=src_home)
        stop.set()
        for t in threads:
            t.join(60)
        if errors:
            raise CertSrvError(None, "demo", f"issuance failed under load: {errors[0]}")
        assert full.manifest is not None
        echo(f"4. full backup to {root / 'full'} while {load_threads} clients issued "
             f"({len(issued) - before} certificates during it); generations "
             f"{full.manifest.gen_low:08X}..{full.manifest.gen_high:08X}, logs truncated: {full.truncated}")
        with Client(svc.socket) as c:
            for i in range(between):
                issued.append(c.submit(_csr(f"mid{i}.example.test"))["serial"])
            wanted = list(issued)  # everything returned to a client before the incremental backup
            incr = run_backup(c, root / "incr", kind="incremental", database_only=True, home=src_home,
                              password=PASSWORD)
            late = c.submit(_csr("late.example.test"))["serial"]
        assert incr.manifest is not None
        echo(f"5. issued {between} more, incremental backup to {root / 'incr'} (generations "
             f"{incr.manifest.gen_low:08X}..{incr.manifest.gen_high:08X}), then one more certificate")
        svc.stop()
        echo("6. stopped the service")
        plan = plan_restore([root / "incr", root / "full"], home=new_home, password=PASSWORD.encode())
        for line in plan.describe():
            echo("   " + line)
        res = run_restore(plan, password=PASSWORD.encode())
        echo(f"7. restored full + incremental into the empty home {new_home} ({res.files} files, "
             f"{res.bytes} bytes; key, configuration and published files from the sets)")
        svc = _Service(new_home)
        t0 = time.monotonic()
        svc.start()
        echo(f"8. the restored CA started in {time.monotonic() - t0:.2f}s (hard recovery before serving)")
        ca_pem = Home(new_home).publish_dir / "ca.crt"
        ok = 0
        bad: list[str] = []
        with Client(svc.socket) as c:
            for serial in wanted:
                try:
                    good, why = _openssl_verify(ca_pem, c.get_certificate(serial), root)
                except CertSrvError as e:
                    good, why = False, str(e)
                if good:
                    ok += 1
                else:
                    bad.append(f"{serial}: {why}")
            try:
                c.get_certificate(late)
                late_present = True
            except CertSrvError:
                late_present = False
        echo(f"9. {ok}/{len(wanted)} certificates issued before the incremental backup are in the restored CA "
             f"and pass openssl verify; the one issued after it is {'present (!)' if late_present else 'absent'}")
        with Client(svc.socket) as c:
            try:
                run_backup(c, root / "after-incr", kind="incremental", database_only=True, home=new_home,
                           password=PASSWORD)
                refused = False
            except CertSrvError as e:
                refused = True
                echo(f"10. an incremental backup of the restored CA is refused: {e}")
            run_backup(c, root / "after-full", database_only=True, home=new_home, password=PASSWORD)
            echo("    a full backup is taken, after which incrementals chain on again")
        result.update({
            "issued_before_incremental": len(wanted), "verified": ok, "failed": bad, "late_absent": not late_present,
            "incremental_refused_after_restore": refused,
            "full_generations": [full.manifest.gen_low, full.manifest.gen_high],
            "incremental_generations": [incr.manifest.gen_low, incr.manifest.gen_high],
            "ok": ok == len(wanted) and not bad and not late_present and refused,
        })
    finally:
        svc.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - t_start, 2)
    echo(("restore demo: OK" if result.get("ok") else "restore demo: FAILED") + f" in {result['seconds']}s")
    return result


if __name__ == "__main__":
    r = run_demo()
    os._exit(0 if r.get("ok") else 1)
