"""Issuance through the service against its peers, measured in the same run with ONE load generator
(:mod:`bench.loadgen`: client processes, one keep-alive connection each, the same EC P-256 requests):

- ``certsrv serve`` (default workers) with 8 and 32 clients over its Unix socket and over TLS with client
  certificates, and ``certsrv serve --workers 0`` (everything in one process) with 8 clients as a baseline;
- ``cfssl serve`` (Go; keeps nothing durable) with 8 and 32 clients, when installed (else it says how to
  install it);
- ``openssl ca``, one process per certificate;
- the CPython ceiling (:mod:`bench.ceiling_server`): a bare issuer that only parses HTTP by hand, verifies the
  request and signs, on every core, with no storage, policy, roles or audit. Its rate against cfssl's bounds
  what any issuer written in CPython with ``cryptography`` can reach on this machine.

Targets (issue 15): the service at 8 clients over the Unix socket >= 1.0x cfssl, and >= 10x ``openssl ca``.
Also reported: p50/p99 latency of each, the server's CPU per issuance, and the resident memory of every
server process (the service's writer and each worker). The service's fsync is real.

Run alone: ``python -m bench.service_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.config import RoleGrant

from . import peers
from .common import start_certsrv
from .loadgen import Target, run_load

TARGET_CFSSL = 1.0
TARGET_OPENSSL = 10.0
CLIENTS = (8, 32)


def _csrs(n: int) -> list[bytes]:
    """``n`` distinct PEM requests (8 EC keys reused: key generation is not what we measure)."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    out = []
    for i in range(n):
        cn = f"host{i}.bench.example"
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        out.append(b.sign(keys[i % 8], hashes.SHA256()).public_bytes(Encoding.PEM))
    return out


def _service_home(root: Path) -> tuple[Path, Path, Path, Path]:
    """A CA home whose TLS listener requires a client certificate mapped to Enrollee; returns the home and
    the client's (cafile, cert, key)."""
    home = root / "home"
    Authority.init(home, "Bench Service CA").close()
    tls = root / "tls"
    _, _, ca_key, ca_cert = peers.make_ca(tls, "Bench TLS CA")
    scert, skey = peers.leaf(tls, "server", ca_key, ca_cert, "127.0.0.1", server=True)
    ccert, ckey = peers.leaf(tls, "client", ca_key, ca_cert, "bench-client", server=False)
    cfg = config_mod.load(home)
    cfg = cfg.model_copy(update={
        "service": cfg.service.model_copy(update={"tls_cert": str(scert), "tls_key": str(skey),
                                                  "client_ca": str(tls / "ca.pem")}),
        "roles": [RoleGrant(principal="cert-subject:CN=bench-client", roles=["Enrollee"])]})  # type: ignore[list-item]
    config_mod.save(home, cfg)
    return home, tls / "ca.pem", ccert, ckey


def _start_service(home: Path, log: Path, workers: int | None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    extra = ["--tcp", "127.0.0.1:0", *(["--workers", str(workers)] if workers is not None else [])]
    proc = start_certsrv(home, log, *extra)
    with Client(home=home, timeout=5) as c:
        return proc, c.status()


def _measured(pids: list[int], fn: Any) -> tuple[dict[str, Any], float]:
    """Run ``fn()``; its result and the CPU seconds ``pids`` spent meanwhile."""
    before = sum(peers.cpu_seconds(p) for p in pids)
    r = fn()
    return r, sum(peers.cpu_seconds(p) for p in pids) - before


def _finish(r: dict[str, Any], cpu: float, pids: list[int]) -> dict[str, Any]:
    r["server_cpu_us"] = round(cpu / max(1, r["ok"]) * 1e6, 1)
    r["rss_kib"] = [peers.rss_kib(p) for p in pids]  # writer first, then each worker
    r["rss_total_kib"] = sum(r["rss_kib"])
    return r


class _Service:
    """A running ``certsrv serve`` with its Unix and TLS targets."""

    def __init__(self, tmp: Path, workers: int | None) -> None:
        self.home, cafile, ccert, ckey = _service_home(tmp / f"svc-{workers}")
        self.proc, st = _start_service(self.home, tmp / f"service-{workers}.log", workers)
        self.pids = [self.proc.pid, *peers.children(self.proc.pid)]
        host, _, port = next(x for x in st["listeners"] if not x.startswith("unix:")).rpartition(":")
        self.targets = {"unix": Target(unix=str(self.home / "certsrv.sock"), path="/ca/requests"),
                        "tls": Target(host=host, port=int(port), path="/ca/requests",
                                      tls=(str(cafile), str(ccert), str(ckey)))}
        self.answered = 0

    def stop(self) -> None:
        """Stop it; every answered issuance must be in its database after the clean stop."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(120)
        a = Authority.open(self.home)
        try:
            stored = a.store.count("request")
        finally:
            a.close()
        assert rc == 0 and stored == self.answered, (rc, stored, self.answered)


def _start_ceiling(tmp: Path) -> tuple[subprocess.Popen[bytes], Target]:
    """:mod:`bench.ceiling_server` on a Unix socket with one process per core (its own session: stopped as a
    group)."""
    sock = tmp / "ceiling.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bench.ceiling_server", f"unix:{sock}", str(os.cpu_count() or 1)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "ceiling.log", "wb"),  # noqa: SIM115
                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("bench.ceiling_server did not start: " + (tmp / "ceiling.log").read_text()[-2000:])
        time.sleep(0.05)
    return proc, Target(unix=str(sock), path="/")


def _print(name: str, r: dict[str, Any]) -> None:
    rss = r.get("rss_kib")
    mem = (f"rss {r['rss_total_kib'] / 1024:.0f} MiB ({' + '.join(f'{x / 1024:.0f}' for x in rss)})"
           if isinstance(rss, list) else f"rss {r.get('rss_kib', 0) / 1024:.0f} MiB per process")
    cpu = f"cpu {r['server_cpu_us']:.0f} us/cert" if "server_cpu_us" in r else ""
    print(f"  {name:28} {r['rate']:>7.0f}/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  {cpu:18} {mem}"
          + (f"  FAILED {r['failed']}: {r['failures'][:1]}" if r.get("failed") else ""), flush=True)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; returns the rows, the ratios and ``pass``.

    :param quick: fewer requests (a smoke run, not a measurement).
    """
    n = 200 if quick else 2000
    rounds = 1 if quick else 3
    n_openssl = 20 if quick else 200
    base = Path(os.environ.get("CERTSRV_BENCH_DIR") or tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="service-bench-", dir=base))
    cpus = os.cpu_count() or 1
    print(f"service_bench: {n} EC P-256 issuances per run, best of {rounds} rounds alternating the servers, "
          f"{cpus} CPUs, one load generator (client processes, one keep-alive connection each), homes under {base}")
    csrs = _csrs(n)  # the same requests for every server (none of them refuses a repeated request)
    ours_bodies = [json.dumps({"csr": p.decode()}).encode() for p in csrs]
    rows: dict[str, dict[str, Any]] = {}
    cfssl_bodies = [json.dumps({"certificate_request": p.decode()}).encode() for p in csrs]
    services: list[_Service] = []
    cfssl_proc: subprocess.Popen[bytes] | None = None
    ceiling_proc: subprocess.Popen[bytes] | None = None
    try:
        services = [_Service(tmp, None), _Service(tmp, 0)]
        # name -> (how to run it once, the server's pids, the service that answers, if ours)
        runs: dict[str, tuple[Any, list[int], _Service | None]] = {}
        for kind in ("unix", "tls"):
            for c in CLIENTS:
                runs[f"certsrv_{kind}_{c}"] = (lambda t=services[0].targets[kind], k=c: run_load(t, ours_bodies, k),
                                               services[0].pids, services[0])
        runs["certsrv_workers0_unix_8"] = (lambda: run_load(services[1].targets["unix"], ours_bodies, 8),
                                           services[1].pids, services[1])
        ceiling_proc, ceiling_target = _start_ceiling(tmp)
        time.sleep(0.5)  # every process of it is accepting
        runs["python_ceiling_unix_8"] = (lambda: run_load(ceiling_target, ours_bodies, 8),
                                         [ceiling_proc.pid, *peers.children(ceiling_proc.pid)], None)
        if peers.cfssl_binary() is None:
            print(f"  cfssl serve: not installed, not measured; install it with: {peers.CFSSL_INSTALL}")
        else:
            cfssl_proc, port = peers.start_cfssl(tmp / "cfssl")
            for c in CLIENTS:
                runs[f"cfssl_{c}"] = (lambda k=c: run_load(Target(port=port, path="/api/v1/cfssl/sign"),
                                                           cfssl_bodies, k), [cfssl_proc.pid], None)
        # Rounds that alternate the servers, best of each: load from elsewhere on the machine hits all alike.
        for _ in range(rounds):
            for name, (fn, pids, svc) in runs.items():
                r, cpu = _measured(pids, fn)
                if svc is not None:
                    svc.answered += r["ok"]
                r = _finish(r, cpu, pids)
                if name not in rows or r["rate"] > rows[name]["rate"]:
                    rows[name] = r
        for name in runs:
            _print(name.replace("_", " "), rows[name])
        rows["openssl_ca"] = peers.run_openssl_ca(tmp / "openssl", csrs[:n_openssl])
        _print("openssl ca (1 process/cert)", rows["openssl_ca"])
    finally:
        if ceiling_proc is not None:
            os.killpg(ceiling_proc.pid, signal.SIGKILL)
            ceiling_proc.wait(30)
        if cfssl_proc is not None:
            cfssl_proc.terminate()
            cfssl_proc.wait(30)
        for svc in services:
            svc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    cfssl = rows.get("cfssl_8")
    ours = rows["certsrv_unix_8"]["rate"]
    ratios: dict[str, float | None] = {
        "vs_cfssl_unix_8": round(ours / cfssl["rate"], 3) if cfssl else None,
        "vs_cfssl_tls_8": round(rows["certsrv_tls_8"]["rate"] / cfssl["rate"], 3) if cfssl else None,
        "vs_cfssl_unix_32": round(rows["certsrv_unix_32"]["rate"] / rows["cfssl_32"]["rate"], 3) if cfssl else None,
        "vs_openssl_ca": round(ours / rows["openssl_ca"]["rate"], 3),
        "vs_workers0": round(ours / rows["certsrv_workers0_unix_8"]["rate"], 3),
        # What any CPython issuer could reach (free storage, policy and HTTP framework), against cfssl; and
        # what share of that bound the service reaches.
        "python_ceiling_vs_cfssl_8": round(rows["python_ceiling_unix_8"]["rate"] / cfssl["rate"], 3) if cfssl else None,
        "vs_python_ceiling_8": round(ours / rows["python_ceiling_unix_8"]["rate"], 3),
    }
    ok_cfssl = ratios["vs_cfssl_unix_8"] is not None and ratios["vs_cfssl_unix_8"] >= TARGET_CFSSL
    ok_openssl = ratios["vs_openssl_ca"] is not None and ratios["vs_openssl_ca"] >= TARGET_OPENSSL
    print("  service (unix, 8 clients) vs cfssl serve: "
          + (f"{ratios['vs_cfssl_unix_8']:.2f}x (target {TARGET_CFSSL}x) {'PASS' if ok_cfssl else 'MISS'}"
             if cfssl else "cfssl not installed"))
    print(f"  service (unix, 8 clients) vs openssl ca: {ratios['vs_openssl_ca']:.1f}x (target {TARGET_OPENSSL}x) "
          f"{'PASS' if ok_openssl else 'MISS'}; vs --workers 0: {ratios['vs_workers0']:.2f}x")
    print(f"  the CPython ceiling (no storage, no policy, bare HTTP, {cpus} processes): "
          + (f"{ratios['python_ceiling_vs_cfssl_8']:.2f}x cfssl; " if cfssl else "")
          + f"the service reaches {ratios['vs_python_ceiling_8']:.2f}x of it")
    return {"benchmark": "service_issuance", "n": n, "rounds": rounds, "cpus": cpus, "rows": rows, "ratios": ratios,
            "targets": {"vs_cfssl_unix_8": TARGET_CFSSL, "vs_openssl_ca": TARGET_OPENSSL},
            "cfssl_installed": cfssl is not None, "pass": ok_cfssl and ok_openssl}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
