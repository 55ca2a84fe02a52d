"""Online backup: full-backup throughput through the service's Unix socket against ``cat`` of the same
files in the same run, issuance throughput while backups run against without, and the service's peak
memory during a backup (it must not grow with the database).

The database (200,000 certificates; 20,000 with ``--quick``) is built once and cached under
``bench/results/cache/`` (one cache per redo-log format version): a few hundred certificates are
really issued by ``Authority.submit``, then their rows (request, extension and attribute rows) are
copied with new request ids and distinct serials through ``store.transaction()`` in batches of
1,000 requests per transaction (so the copies travel through the redo log like any write), then a
checkpoint and log truncation. The copies keep the original certificate bytes (the ``serial``
column differs from the DER's serial): the bench measures bytes moved, not PKI validity.

Method: the cached home is copied and flushed to disk (so no writeback of the copy competes with
what is measured), the service is started, then ROUNDS full backups (``--database-only``, logs
kept) run one after the other; the best rate (MB/s) is compared with the best of ROUNDS runs of
``cat`` of the first set's files (to a file + ``sync`` of it; and to /dev/null), page cache warm
for both. Both treat their output alike: the first set is kept as the input of ``cat``, every later
set is deleted once written, as ``cat``'s output file is (in this VM, writing into memory that was
never used, or was handed back to the host, is several times slower: keeping every set would tilt
the comparison against the backup).
The issuance comparison alternates windows without backups, with back-to-back backups, and with
back-to-back backups run as ``certsrv backup --nice NICE`` would (ISSUE_ROUNDS rounds), and compares
the totals; the target applies to the plain (not niced) backups. It also reports the issuances lost
per backup, which shows the cost of one backup whatever the number of backups fitting a window.

Run alone: ``python -m bench.backup_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.store.logfile import FORMAT_VERSION

from .common import start_certsrv

TARGET_THROUGHPUT_RATIO = 0.5
TARGET_ISSUANCE_RATIO = 0.8
REAL_CERTS = 300
BATCH = 1000
ROUNDS = 5
ISSUE_ROUNDS = 2
NICE = 10
CA_NAME = "Bench Backup CA"
CACHE = Path(__file__).resolve().parent / "results" / "cache"
LOOP = r"""
import os, pathlib, shutil, sys
from pycertsrv.backupset.writer import run_backup
from pycertsrv.client import Client
sock, work, stop, nice = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
if nice:
    os.nice(nice)  # as `certsrv backup --nice N` does
k = 0
with Client(sock) as c:
    print("ready", flush=True)
    while not stop.exists():
        d = work / f"loop{k}"
        run_backup(c, d, database_only=True, keep_log=True, password=b"bench")
        shutil.rmtree(d)
        k += 1
print(k)
"""


def _csrs(n: int, tag: str) -> list[bytes]:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(min(n, 8))]
    out = []
    for i in range(n):
        cn = f"{tag}{i}.bench.example"
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        out.append(b.sign(keys[i % len(keys)], hashes.SHA256()).public_bytes(Encoding.DER))
    return out


def build_database(n: int) -> Path:
    """The cached home holding ``n`` certificates (built on first use; see the module docstring)."""
    final = CACHE / f"home-{n}-logv{FORMAT_VERSION}"  # a new log format cannot open an old cache
    if (final / "BUILT.json").is_file():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in [CACHE / f"home-{n}", *CACHE.glob(f"home-{n}-logv*")]:  # caches of older log formats
        shutil.rmtree(old, ignore_errors=True)
    tmp = CACHE / f"home-{n}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    a = Authority.init(tmp, CA_NAME)
    try:
        for der in _csrs(REAL_CERTS, "real"):
            a.submit(der, requester="bench")
        st = a.store
        reqs = st.select("request", order_by=["request_id"])
        exts: dict[int, list[dict[str, Any]]] = {}
        for e in st.select("extension"):
            exts.setdefault(int(e["request_id"]), []).append(e)
        attrs: dict[int, list[dict[str, Any]]] = {}
        for r in st.select("attribute"):
            attrs.setdefault(int(r["request_id"]), []).append(r)
        next_id = int(st.max_value("request", "request_id")) + 1
        made = len(reqs)
        while made < n:
            with st.transaction() as tx:
                for _ in range(min(BATCH, n - made)):
                    src = reqs[made % len(reqs)]
                    rid = next_id
                    next_id += 1
                    tx.put("request", {**src, "request_id": rid, "serial": f"{0x4000000000000000 + rid:X}"})
                    for e in exts.get(int(src["request_id"]), []):
                        tx.put("extension", {**e, "request_id": rid})
                    for r in attrs.get(int(src["request_id"]), []):
                        tx.put("attribute", {**r, "request_id": rid})
                    made += 1
        cp = st.checkpoint()
        st.truncate_logs(cp.generation)  # the build's own log volume is not part of the bench
        count = st.count("request")
    finally:
        a.close()
    info = {"certificates": count, "really_issued": REAL_CERTS, "batch": BATCH,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "method": f"{REAL_CERTS} certificates issued by Authority.submit, then rows copied with new request "
                      f"ids and serials through store.transaction() in batches of {BATCH} requests"}
    (tmp / "BUILT.json").write_text(json.dumps(info, indent=2))
    os.replace(tmp, final)
    return final


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0])  # kB
    return out


class _Service:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc = start_certsrv(home, home.parent / "service.log")
        self.socket = f"unix:{home / 'certsrv.sock'}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(120)


def _issue_for(socket: str, csrs: list[bytes], seconds: float, threads: int, stop: threading.Event) -> int:
    """Issue with ``threads`` clients for ``seconds``; returns how many certificates came back."""
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def worker(k: int) -> None:
        with Client(socket) as c:
            i = k
            while time.monotonic() < deadline and not stop.is_set():
                c.submit(csrs[i % len(csrs)])
                counts[k] += 1
                i += threads

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts)


def _flush_tree(root: Path) -> None:
    """fsync every file under ``root`` (the copied home): its writeback must not overlap a measurement."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; returns the numbers and whether the targets were met.

    :param quick: 20,000 certificates instead of 200,000, shorter issuance windows.
    """
    n = 20_000 if quick else 200_000
    window = 4.0 if quick else 10.0
    threads = 4
    src = build_database(n)
    built = json.loads((src / "BUILT.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bkb", dir="/tmp"))
    home = work / "ca"
    shutil.copytree(src, home, ignore=shutil.ignore_patterns("BUILT.json", ".lock", "*.sock"))
    _flush_tree(home)
    db_bytes = sum(p.stat().st_size for p in (home / "db").iterdir())
    print(f"backup_bench: {built['certificates']} certificates, database {db_bytes / 1e6:.1f} MB ({built['method']})")
    svc = _Service(home)
    try:
        pid = svc.proc.pid
        before = _status(pid)
        peak = {"rss": before["VmRSS"]}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                try:
                    peak["rss"] = max(peak["rss"], _status(pid)["VmRSS"])
                except OSError:
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        runs: list[dict[str, Any]] = []
        with Client(svc.socket) as client:
            for k in range(ROUNDS):
                marks: dict[str, float] = {}

                def progress(ev: Any, marks: dict[str, float] = marks) -> None:
                    marks.setdefault(ev.phase, time.perf_counter())

                t0 = time.perf_counter()
                res = run_backup(client, work / f"set{k}", database_only=True, keep_log=True, home=home,
                                 progress=progress, password=b"bench")
                t = time.perf_counter() - t0
                runs.append({"seconds": t, "stream": t0 + t - marks.get("Database files", t0),
                             "bytes": res.bytes_streamed, "set": work / f"set{k}"})
                if k:  # as cat's output below: written, then deleted
                    shutil.rmtree(work / f"set{k}")
        sampling.set()
        sampler.join()
        after = _status(pid)
        best = max(runs, key=lambda r: r["bytes"] / r["seconds"])
        t_backup, t_stream, nbytes = best["seconds"], best["stream"], best["bytes"]
        rate = nbytes / t_backup
        cat_set = runs[0]["set"]
        files = sorted(str(p) for p in (cat_set / "DataBase").iterdir() if p.name != "certbkxp.dat")
        cat_bytes = sum(os.path.getsize(f) for f in files)
        # Baselines on the files of a backup set, page cache warm as for the backup.
        t_cat_read = min(_timed(["cat", *files]) for _ in range(ROUNDS))
        out = work / "cat.out"
        copies = []
        for _ in range(ROUNDS):
            copies.append(_timed(["sh", "-c", 'cat "$@" > "$0" && sync "$0"', str(out), *files]))
            out.unlink()
        t_cat_copy = min(copies)
        shutil.rmtree(cat_set)
        ratio_copy = rate / (cat_bytes / t_cat_copy)
        ratio_read = rate / (cat_bytes / t_cat_read)
        print(f"  full backup (best of {ROUNDS}: " + ", ".join(f"{r['seconds']:.2f}s" for r in runs) + "): "
              f"{nbytes / 1e6:.1f} MB in {t_backup:.2f}s = {rate / 1e6:.0f} MB/s "
              f"(streaming {t_stream:.2f}s after Prepare/snapshot {t_backup - t_stream:.2f}s)")
        print(f"  cat > file + sync of {cat_bytes / 1e6:.1f} MB (best of {ROUNDS}: "
              + ", ".join(f"{c:.2f}s" for c in copies) + f"): {t_cat_copy:.2f}s ({cat_bytes / t_cat_copy / 1e6:.0f} "
              f"MB/s) -> ratio {ratio_copy:.2f} (target {TARGET_THROUGHPUT_RATIO}); cat > /dev/null: "
              f"{t_cat_read:.3f}s -> ratio {ratio_read:.3f}")
        print(f"  service memory: VmRSS before {before['VmRSS'] / 1024:.0f} MiB, peak sampled during backups "
              f"{peak['rss'] / 1024:.0f} MiB, VmHWM {after['VmHWM'] / 1024:.0f} MiB "
              f"(database {db_bytes / 2**20:.0f} MiB)")

        csrs = _csrs(400, "load")

        def during_backups(nice: int) -> tuple[int, int]:
            """Issue for one window while one backup process runs full backups back to back."""
            stop_file = work / "stop-loop"
            stop_file.unlink(missing_ok=True)
            looper = subprocess.Popen([sys.executable, "-c", LOOP, svc.socket, str(work), str(stop_file), str(nice)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert looper.stdout is not None
            if looper.stdout.readline().strip() != "ready":
                raise RuntimeError("backup loop did not start: " + (looper.stderr.read() if looper.stderr else ""))
            issued = _issue_for(svc.socket, csrs, window, threads, threading.Event())
            stop_file.touch()
            out_text, err_text = looper.communicate(timeout=600)
            if looper.returncode != 0:
                raise RuntimeError("backup during issuance failed: " + err_text[-500:])
            return issued, int(out_text.split()[-1])

        totals = {"base": 0, "plain": 0, "nice": 0}
        backups: dict[str, list[int]] = {"plain": [], "nice": []}
        for _ in range(ISSUE_ROUNDS):
            base = _issue_for(svc.socket, csrs, window, threads, threading.Event())
            plain, k_plain = during_backups(0)
            niced, k_nice = during_backups(NICE)
            totals["base"] += base
            totals["plain"] += plain
            totals["nice"] += niced
            backups["plain"].append(k_plain)
            backups["nice"].append(k_nice)
            print(f"  issuance ({threads} clients, {window:.0f}s windows): {base / window:.0f}/s without backup, "
                  f"{plain / window:.0f}/s with {k_plain} back-to-back full backups, {niced / window:.0f}/s with "
                  f"{k_nice} under --nice {NICE}")
        per_window = window * ISSUE_ROUNDS
        ratio_issue = totals["plain"] / totals["base"] if totals["base"] else 0.0
        ratio_nice = totals["nice"] / totals["base"] if totals["base"] else 0.0
        lost = {k: (totals["base"] - totals[k]) / max(sum(backups[k]), 1) for k in ("plain", "nice")}
        print(f"  issuance over {ISSUE_ROUNDS} rounds: {totals['base'] / per_window:.0f}/s without, "
              f"{totals['plain'] / per_window:.0f}/s during backups -> ratio {ratio_issue:.2f} "
              f"(target {TARGET_ISSUANCE_RATIO}), {lost['plain']:.0f} issuances lost per backup; "
              f"--nice {NICE}: {totals['nice'] / per_window:.0f}/s -> ratio {ratio_nice:.2f}, "
              f"{lost['nice']:.0f} lost per backup")
        hwm_final = _status(pid)["VmHWM"]
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "backup", "certificates": built["certificates"], "database_bytes": db_bytes,
        "build": built, "bytes_streamed": nbytes, "backup_seconds": round(t_backup, 3),
        "backup_seconds_all": [round(r["seconds"], 3) for r in runs],
        "backup_bytes_all": [r["bytes"] for r in runs],
        "backup_mb_per_s": round(rate / 1e6, 1), "stream_seconds": round(t_stream, 3),
        "cat_bytes": cat_bytes, "cat_copy_mb_per_s": round(cat_bytes / t_cat_copy / 1e6, 1),
        "cat_copy_seconds": round(t_cat_copy, 3), "cat_copy_seconds_all": [round(c, 3) for c in copies],
        "cat_read_seconds": round(t_cat_read, 4),
        "throughput_ratio_vs_cat_copy": round(ratio_copy, 3), "throughput_ratio_vs_cat_read": round(ratio_read, 3),
        "issuance_per_s_without_backup": round(totals["base"] / per_window, 1),
        "issuance_per_s_during_backups": round(totals["plain"] / per_window, 1),
        "backups_during_windows": backups["plain"], "issuance_ratio": round(ratio_issue, 3),
        "issuances_lost_per_backup": round(lost["plain"], 1),
        "issuance_per_s_during_nice_backups": round(totals["nice"] / per_window, 1),
        "nice": NICE, "backups_during_nice_windows": backups["nice"],
        "issuance_ratio_nice": round(ratio_nice, 3), "issuances_lost_per_nice_backup": round(lost["nice"], 1),
        "service_rss_before_kib": before["VmRSS"], "service_peak_rss_sampled_kib": peak["rss"],
        "service_vmhwm_after_backup_kib": after["VmHWM"], "service_vmhwm_final_kib": hwm_final,
        "targets": {"throughput_ratio_vs_cat_copy": TARGET_THROUGHPUT_RATIO, "issuance_ratio": TARGET_ISSUANCE_RATIO},
        "pass": ratio_copy >= TARGET_THROUGHPUT_RATIO and ratio_issue >= TARGET_ISSUANCE_RATIO,
    }
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
