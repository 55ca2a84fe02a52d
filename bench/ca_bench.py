"""Issuance throughput: durable issuance through ``Authority.submit`` (parse, verify the request's
signature, sign, one redo-log transaction made durable with fsync, applied to SQLite) against the raw
ceiling measured in the same run (a loop of ``CertificateBuilder().sign()`` with the same extensions,
no parsing, no storage), single-threaded and with several threads (group commit shares the fsyncs).

Run alone: ``python -m bench.ca_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pycertsrv.ca import Authority
from pycertsrv.ca.keys import generate_key

TARGET_RATIO = 0.6
CONFIGS = (("ec-p256", "ec-p256"), ("ec-p256", "rsa-2048"), ("rsa-2048", "rsa-2048"), ("rsa-2048", "ec-p256"))


def _request_key(kind: str) -> Any:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec-p256" else rsa.generate_private_key(65537, 2048)


def _csrs(kind: str, n: int) -> list[bytes]:
    """``n`` distinct DER requests (a few keys reused: key generation is not what we measure)."""
    keys = [_request_key(kind) for _ in range(min(n, 8))]
    out = []
    for i in range(n):
        cn = f"host{i}.bench.example"
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        out.append(b.sign(keys[i % len(keys)], hashes.SHA256()).public_bytes(Encoding.DER))
    return out


def _raw_sign_fn(a: Authority, csrs: list[bytes]) -> Callable[[int], None]:
    """The ceiling: build + sign with the same extensions as a ``server`` certificate, nothing else."""
    ca_key = a._key
    ca_cert = a.certificate
    parsed = [x509.load_der_x509_csr(d) for d in csrs]
    pubs = [c.public_key() for c in parsed]
    sans = [c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value for c in parsed]
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    algo = hashes.SHA384() if isinstance(ca_key, ec.EllipticCurvePrivateKey) and ca_key.key_size >= 384 \
        else hashes.SHA256()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def one(i: int) -> None:
        pub = pubs[i]
        ku = x509.KeyUsage(True, False, isinstance(pub, rsa.RSAPublicKey), False, False, False, False, False, False)
        (
            x509.CertificateBuilder()
            .subject_name(parsed[i].subject)
            .issuer_name(ca_cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(sans[i], critical=False)
            .sign(ca_key, algo)
        )

    return one


def _rate(fn: Callable[[int], Any], n: int, threads: int) -> float:
    t0 = time.perf_counter()
    if threads == 1:
        for i in range(n):
            fn(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(fn, range(n), chunksize=4):
                pass
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; returns ``{"configs": [...], "target_ratio": 0.6, "pass": bool}``.

    :param quick: fewer requests per measurement (for CI smoke runs).
    """
    n = 150 if quick else 1500
    thread_counts = (1, 8) if quick else (1, 4, 16)
    base = Path(os.environ.get("CERTSRV_BENCH_DIR") or tempfile.gettempdir())
    results: list[dict[str, Any]] = []
    cpus = os.cpu_count() or 1
    print(f"ca_bench: {n} issuances per measurement, {cpus} CPUs, homes under {base} (fsync is real)")
    for ca_type, req_type in CONFIGS:
        csrs = _csrs(req_type, n)
        tmp = Path(tempfile.mkdtemp(prefix="ca-bench-", dir=base))
        try:
            key = generate_key(ca_type)
            row: dict[str, Any] = {"ca_key": ca_type, "request_key": req_type, "n": n}
            for threads in thread_counts:
                home = tmp / f"t{threads}"
                a = Authority.init(home, f"Bench {ca_type} CA", key_type=ca_type, key=key)
                try:
                    raw = _rate(_raw_sign_fn(a, csrs), n, threads)
                    durable = _rate(lambda i, a=a, csrs=csrs: a.submit(csrs[i]), n, threads)
                    issued = a.store.count("request")
                    serials = len({r["serial"] for r in a.store.select("request")})
                    assert issued == serials == n, (issued, serials, n)
                    lsn = a.store.applied_lsn
                finally:
                    a.close()
                row[f"raw_{threads}t"] = round(raw, 1)
                row[f"durable_{threads}t"] = round(durable, 1)
                row[f"commits_{threads}t"] = lsn  # log records written: fewer than n when batched
            ceiling = row["raw_1t"]  # the brief's ceiling: one loop of CertificateBuilder().sign()
            for t in thread_counts:
                row[f"ratio_{t}t"] = round(row[f"durable_{t}t"] / ceiling, 3)
                row[f"ratio_same_threads_{t}t"] = round(row[f"durable_{t}t"] / row[f"raw_{t}t"], 3)
            best = max(thread_counts, key=lambda t: row[f"ratio_{t}t"])
            row["best_threads"] = best
            row["best_ratio"] = row[f"ratio_{best}t"]
            row["pass"] = row["best_ratio"] >= TARGET_RATIO
            results.append(row)
            cols = "  ".join(f"{t}t durable {row[f'durable_{t}t']:>6.0f}/s ({row[f'commits_{t}t']} commits) "
                             f"{row[f'ratio_{t}t']:.2f}x [raw {row[f'raw_{t}t']:.0f}/s]" for t in thread_counts)
            print(f"  CA {ca_type:8} req {req_type:8} raw loop {ceiling:>6.0f}/s | {cols} | "
                  f"{'PASS' if row['pass'] else 'MISS'}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {"benchmark": "ca_issuance", "target_ratio": TARGET_RATIO, "configs": results,
               "pass": all(r["pass"] for r in results)}
    return summary


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    print(json.dumps(out, indent=2))
