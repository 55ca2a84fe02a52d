"""Issuance through the service: throughput and latency with 1 and 8 concurrent clients over the Unix socket
(the real ``certsrv serve`` in a subprocess, each client its own :class:`pycertsrv.client.Client` in a thread),
against in-process ``Authority.submit`` with the same number of threads, measured in the same run on homes
made the same way (fsync is real). Target: with 8 clients, at least 0.5x in-process.

Run alone: ``python -m bench.service_bench [--quick]``; the bench runner calls :func:`run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.errors import CertSrvError

TARGET_RATIO = 0.5
CLIENTS = (1, 8)


def _csrs(n: int) -> list[bytes]:
    """``n`` distinct DER requests (8 EC keys reused: key generation is not what we measure)."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    out = []
    for i in range(n):
        cn = f"host{i}.bench.example"
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        out.append(b.sign(keys[i % 8], hashes.SHA256()).public_bytes(Encoding.DER))
    return out


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _measure(calls: list[Callable[[int], Any]], n: int) -> dict[str, float]:
    """Run ``n`` calls spread over ``len(calls)`` workers (worker k uses ``calls[k]``); rate and latencies."""
    workers = len(calls)
    lat: list[float] = []

    def worker(k: int) -> list[float]:
        mine = []
        for i in range(k, n, workers):
            t = time.perf_counter()
            calls[k](i)
            mine.append(time.perf_counter() - t)
        return mine

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for part in pool.map(worker, range(workers)):
            lat += part
    elapsed = time.perf_counter() - t0
    return {"rate": round(n / elapsed, 1), "p50_ms": round(_pct(lat, 50) * 1e3, 2),
            "p99_ms": round(_pct(lat, 99) * 1e3, 2), "mean_ms": round(statistics.fmean(lat) * 1e3, 2)}


def _in_process(home: Path, csrs: list[bytes], workers: int, offset: int, n: int) -> dict[str, float]:
    a = Authority.open(home)
    try:
        return _measure([lambda i: a.submit(csrs[offset + i])] * workers, n)
    finally:
        a.close()


def _start_service(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(home),
                                 "--log-level", "warning"], stdout=f, stderr=f)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with Client(home=home, timeout=5) as c:
                if c.is_server_online():
                    return proc
        except CertSrvError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("service did not start")
        time.sleep(0.05)


def _through_service(home: Path, csrs: list[bytes], workers: int, offset: int, n: int) -> dict[str, float]:
    clients = [Client(home=home, timeout=120) for _ in range(workers)]
    try:
        clients[0].status()  # connections warm, the first CRL out of the way
        return _measure([lambda i, c=c: c.submit(csrs[offset + i]) for c in clients], n)
    finally:
        for c in clients:
            c.close()


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; returns ``{"clients": {...}, "ratio_8": x, "target_ratio": 0.5, "pass": bool}``.

    :param quick: fewer requests per measurement (smoke runs).
    """
    n = 120 if quick else 1200
    base = Path(os.environ.get("CERTSRV_BENCH_DIR") or tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="service-bench-", dir=base))
    print(f"service_bench: {n} issuances per measurement (EC P-256 CA and requests), {os.cpu_count()} CPUs, "
          f"homes under {base}")
    csrs = _csrs(n * len(CLIENTS) * 2 + 10)
    rows: dict[str, dict[str, Any]] = {}
    try:
        inproc_home, svc_home = tmp / "inproc", tmp / "service"
        for h in (inproc_home, svc_home):
            Authority.init(h, "Bench Service CA").close()
        offset = 0
        inproc: dict[int, dict[str, float]] = {}
        for w in CLIENTS:
            inproc[w] = _in_process(inproc_home, csrs, w, offset, n)
            offset += n
        proc = _start_service(svc_home, tmp / "service.log")
        service: dict[int, dict[str, float]] = {}
        try:
            for w in CLIENTS:
                service[w] = _through_service(svc_home, csrs, w, offset, n)
                offset += n
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
        # Every answered issuance is in the database after the clean stop.
        a = Authority.open(svc_home)
        try:
            stored = a.store.count("request")
        finally:
            a.close()
        assert rc == 0 and stored == n * len(CLIENTS), (rc, stored)
        for w in CLIENTS:
            ratio = service[w]["rate"] / inproc[w]["rate"]
            rows[str(w)] = {"in_process": inproc[w], "service": service[w], "ratio": round(ratio, 3)}
            print(f"  {w} client(s): service {service[w]['rate']:>6.0f}/s p50 {service[w]['p50_ms']:.1f} ms "
                  f"p99 {service[w]['p99_ms']:.1f} ms | in-process {inproc[w]['rate']:>6.0f}/s "
                  f"p50 {inproc[w]['p50_ms']:.1f} ms p99 {inproc[w]['p99_ms']:.1f} ms | ratio {ratio:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio8 = rows["8"]["ratio"]
    ok = ratio8 >= TARGET_RATIO
    print(f"  8 clients through the service: {ratio8:.2f}x in-process (target {TARGET_RATIO}x) "
          f"{'PASS' if ok else 'MISS'}")
    return {"benchmark": "service_issuance", "n": n, "clients": rows, "ratio_8": ratio8,
            "target_ratio": TARGET_RATIO, "pass": ok}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
