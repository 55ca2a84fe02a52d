"""Continuous archiving (issue 13): archive lag under sustained issuance, and issuance with archiving
against without, in the same run.

Two homes made the same way; in-process ``Authority.submit`` on 4 threads (fsync is real). One home runs
the service's :class:`pycertsrv.archive.shipper.Shipper` thread to a directory (``timeout`` 1 s). A watcher
polls the archive every 10 ms and notes when each record's LSN appears there; a record's commit time is
its own timestamp in the log (given under the write lock at commit), so lag = archived - committed, for
every record. Rounds alternate the two homes so a burst of load elsewhere hits both alike; the best
rate of each is compared. Target: with archiving >= 0.9x without.

Run alone: ``python -m bench.archive_bench [--quick]``; the bench runner calls :func:`run`.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv import config as config_mod
from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.shipper import Shipper
from pycertsrv.ca import Authority
from pycertsrv.store import logfile

from .common import work_dir

TARGET_RATIO = 0.9
THREADS = 4
TIMEOUT = 1.0


def _csrs(n: int) -> list[bytes]:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    out = []
    for i in range(n):
        cn = f"host{i}.archive-bench.example"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = x509.CertificateSigningRequestBuilder().subject_name(name)
        out.append(b.sign(keys[i % 8], hashes.SHA256()).public_bytes(Encoding.DER))
    return out


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class _Watcher(threading.Thread):
    """Notes the time each archived record's LSN first appears in the archive directory."""

    def __init__(self, dest: Path) -> None:
        super().__init__(daemon=True)
        self.dest = dest
        self.seen: dict[str, float] = {}
        self.lag: dict[int, float] = {}
        self.stop = threading.Event()

    def _poll(self) -> None:
        for p in self.dest.rglob("edb*.log"):
            if p.name in self.seen:
                continue
            now = time.time()
            self.seen[p.name] = now
            _, recs = logfile.scan(p, None, keep=True)
            for r in recs:
                self.lag[r.lsn] = now - r.ts_us / 1e6

    def run(self) -> None:
        while not self.stop.is_set():
            self._poll()
            self.stop.wait(0.01)
        self._poll()


def _rate(a: Authority, csrs: list[bytes]) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in pool.map(a.submit, csrs):
            pass
    return len(csrs) / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; returns lag percentiles, both rates, their ratio and the verdict."""
    n = 150 if quick else 800
    rounds = 1 if quick else 3
    csrs = _csrs(n * rounds * 2)
    with work_dir("archive") as w:
        plain = Authority.init(w / "plain", "Archive Bench CA")
        arch = Authority.init(w / "arch", "Archive Bench CA")
        dest = w / "dest"
        section = ArchiveSection(dest=str(dest), timeout=TIMEOUT)
        cfg = config_mod.load(arch.home.root)
        config_mod.save(arch.home.root, cfg.model_copy(update={"archive": section}))
        shipper = Shipper(arch.store, section, arch.home.root).start()
        watcher = _Watcher(dest)
        watcher.start()
        best = {"without": 0.0, "with": 0.0}
        try:
            for r in range(rounds):
                base = r * 2 * n
                best["without"] = max(best["without"], _rate(plain, csrs[base:base + n]))
                best["with"] = max(best["with"], _rate(arch, csrs[base + n:base + 2 * n]))
            last = arch.store.log_position[2]
            deadline = time.monotonic() + 60
            while last not in watcher.lag and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            shipper.stop()
            watcher.stop.set()
            watcher.join(10)
            plain.close()
            arch.close()
    lags = list(watcher.lag.values())
    ratio = best["with"] / best["without"] if best["without"] else 0.0
    print(f"archive_bench: {n} issuances x {rounds} rounds per home, {THREADS} threads, timeout {TIMEOUT:g}s, "
          f"{len(lags)} records archived", file=sys.stderr)
    return {
        "issuances_per_round": n, "rounds": rounds, "threads": THREADS, "timeout_s": TIMEOUT,
        "records_archived": len(lags),
        "lag_s": {"median": round(_pct(lags, 50), 3) if lags else None,
                  "p99": round(_pct(lags, 99), 3) if lags else None,
                  "max": round(max(lags), 3) if lags else None},
        "rate_without": round(best["without"], 1), "rate_with": round(best["with"], 1),
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "pass": bool(lags) and ratio >= TARGET_RATIO,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
