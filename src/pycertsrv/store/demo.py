"""The engine demo: SIGKILL a process that is committing, reopen the database, show what recovery found.

Used by ``certsrv demo`` (``--part engine``); everything it shows is re-read from disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .options import StoreOptions
from .sqlite import Store

# The committing child: each transaction writes a request row and three attribute rows; the request id
# goes to the ack file only AFTER the commit returned (so the parent knows what must survive).
_CHILD = r"""
import os, sys, threading
from pathlib import Path
from pycertsrv.store import Store, StoreOptions
home, ack, log_size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store.open(Path(home), StoreOptions(log_size=log_size, checkpoint_records=200))
fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def work():
    while True:
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 9, "requester": "demo",
                               "disposition_message": f"demo transaction {rid}", "raw_request": os.urandom(300)})
            for name in ("RequesterName", "CertificateTemplate", "Comment"):
                tx.put("attribute", {"request_id": rid, "name": name, "value": f"{name}-{rid}"})
        os.write(fd, b"%d\n" % rid)
ts = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
"""
_ATTRS = ("RequesterName", "CertificateTemplate", "Comment")


def _acks(path: Path) -> set[int]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return set()
    return {int(x) for x in raw.split(b"\n") if x.isdigit()}


def run_engine_demo(
    echo: Callable[[str], Any] = print,
    *,
    workdir: Path | None = None,
    min_commits: int = 300,
    threads: int = 4,
    log_size: int = 64 << 10,
) -> dict[str, Any]:
    """Create a home, let a child commit from several threads, SIGKILL it, reopen and check; returns the facts.

    :param echo: where the narration goes (``print``, ``click.echo``).
    :param workdir: keep the home in this new directory (default: a temporary one, removed afterwards).
    :param min_commits: kill once at least this many commits were acknowledged (or after 20 s).
    :param threads: committing threads in the child (group commit).
    :param log_size: generation size, small so that the log rolls during the demo.
    """
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="certsrv-engine-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    home = base / "home"
    ack = base / "acknowledged.txt"
    try:
        Store.create(home, "Engine Demo", StoreOptions(log_size=log_size)).close()
        echo(f"home {home}: db/, logs/, system/edb.chk created")
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])  # the directory holding the pycertsrv package
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(home), str(ack), str(log_size), str(threads)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while len(_acks(ack)) < min_commits and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        acked = _acks(ack)
        echo(f"child pid {proc.pid} ({threads} committing threads) killed with SIGKILL after "
             f"{len(acked)} acknowledged commits")
        if proc.returncode != -signal.SIGKILL and err:
            echo(f"child ended by itself: {err.splitlines()[-1]}")

        store = Store.open(home, StoreOptions(log_size=log_size))
        try:
            rep = store.recovery
            gens = store.generations()
            echo(f"reopened: {rep.summary()}")
            if rep.torn_tail:
                echo(f"  torn tail cut: {rep.torn_tail['file']} at offset {rep.torn_tail['offset']} "
                     f"({rep.torn_tail['bytes']} bytes: {rep.torn_tail['reason']})")
            else:
                echo("  torn tail: none (the kill fell between two whole records)")
            present = {r["request_id"] for r in store.select("request")}
            attrs: dict[int, set[str]] = {}
            for a in store.select("attribute"):
                attrs.setdefault(a["request_id"], set()).add(a["name"])
            half = sorted(rid for rid in present | set(attrs) if attrs.get(rid) != set(_ATTRS) or rid not in present)
            missing = sorted(acked - present)
            integrity = store.integrity_check()
            echo(f"  log generations: {gens[0].generation:08X}..{gens[-1].generation:08X} ({len(gens)} files)")
            echo(f"  rows present: {len(present)} transactions (request + 3 attribute rows each); "
                 f"acknowledged before the kill: {len(acked)}; committed but not yet acknowledged: "
                 f"{len(present - acked)}")
            echo(f"  acknowledged but missing: {len(missing)}; half-applied transactions: {len(half)}; "
                 f"integrity_check: {integrity}")
        finally:
            store.close()
        store = Store.open(home, StoreOptions(log_size=log_size))
        try:
            clean = store.recovery
            echo(f"clean close, reopen: {clean.summary()}")
        finally:
            store.close()
        ok = bool(acked) and not missing and not half and integrity == "ok" and clean.replayed == 0
        return {
            "home": str(home), "acknowledged": len(acked), "present": len(present), "missing": missing[:20],
            "half_applied": half[:20], "integrity_check": integrity, "recovery": rep.to_json(),
            "generations": len(gens), "clean_reopen_replayed": clean.replayed, "ok": ok,
        }
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
