"""Helpers for the store tests: a committing child process, raw reads of a database file, log surgery."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pycertsrv.store import Store, logfile

# The crash-test child: opens the home, commits "whole" transactions from N threads and appends each
# request id to the ack file only AFTER its commit returned, so the parent knows what must exist.
# Each transaction writes a request row, three attribute rows, moves the single "latest" attribute
# (a delete of the previous one plus a put) and sets setting.last: a half-applied one is visible.
CHILD = r"""
import os, sys, threading
from pathlib import Path
from pycertsrv.store import Store, StoreOptions
home, ack, log_size, threads, cp_records, circular = sys.argv[1:7]
store = Store.open(Path(home), StoreOptions(log_size=int(log_size), checkpoint_records=int(cp_records),
                                            circular_logging=circular == "1"))
fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, b"open\n")
blob = os.urandom(200)
def work():
    while True:
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {"request_id": rid, "disposition": 9, "disposition_message": f"tx{rid}",
                               "raw_request": blob, "requester": "crash"})
            for j in range(3):
                tx.put("attribute", {"request_id": rid, "name": f"a{j}", "value": f"{rid}:{j}"})
            if rid > 1:
                tx.delete("attribute", (rid - 1, "latest"))
            tx.put("attribute", {"request_id": rid, "name": "latest", "value": str(rid)})
            tx.put("setting", {"name": "last", "value": str(rid)})
        os.write(fd, b"%d\n" % rid)
ts = [threading.Thread(target=work, daemon=True) for _ in range(int(threads))]
for t in ts:
    t.start()
for t in ts:
    t.join()
"""

# A child that opens the home, says so, and holds it until killed.
HOLDER = r"""
import sys, time
from pathlib import Path
from pycertsrv.store import Store
store = Store.open(Path(sys.argv[1]))
print("ready", flush=True)
time.sleep(120)
"""


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports pycertsrv from this checkout."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_child(code: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``python -c code args...``."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=child_env(), **kw)


def read_acks(path: Path) -> tuple[bool, set[int]]:
    """(whether the child got past open, the ids whose commit returned) from an ack file."""
    if not path.exists():
        return False, set()
    opened = False
    ids: set[int] = set()
    # Only newline-terminated lines count: a fragment read while the child is writing is no ack yet.
    for line in path.read_bytes().split(b"\n")[:-1]:
        if line == b"open":
            opened = True
        elif line.isdigit():
            ids.add(int(line))
    return opened, ids


def wait_acks(proc: subprocess.Popen[bytes], path: Path, count: int, timeout: float = 120.0) -> None:
    """Wait until the crash child has opened the store and acknowledged ``count`` commits (or fail).

    Waiting on the child's own progress, not on the clock, is what makes a kill land mid-work however
    loaded the machine is; ``timeout`` only bounds the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        opened, ids = read_acks(path)
        if opened and len(ids) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"crash child exited ({proc.returncode}) after {len(ids)} of {count} acks")
        time.sleep(0.002)
    raise AssertionError(f"crash child did not acknowledge {count} commits within {timeout}s")


def check_whole(store: Store) -> list[int]:
    """Assert every transaction of the crash child is all-or-nothing; return the request ids present."""
    ids = sorted(r["request_id"] for r in store.select("request"))
    # ids are allocated under the write lock, in LSN order, and only a suffix of the log can be lost.
    assert ids == list(range(1, len(ids) + 1)), f"request ids not contiguous: {ids[:5]}..{ids[-5:]}"
    attrs: dict[int, dict[str, str]] = {}
    for a in store.select("attribute"):
        attrs.setdefault(a["request_id"], {})[a["name"]] = a["value"]
    assert set(attrs) <= set(ids), "attribute rows without their request"
    for rid in ids:
        want = {f"a{j}": f"{rid}:{j}" for j in range(3)}
        if rid == ids[-1]:
            want["latest"] = str(rid)
        assert attrs.get(rid) == want, f"request {rid} is half applied: {attrs.get(rid)}"
        row = store.get("request", rid)
        assert row is not None and row["disposition_message"] == f"tx{rid}"
    last = store.get("setting", "last")
    if ids:
        assert last is not None and last["value"] == str(ids[-1]), f"setting.last {last} vs max id {ids[-1]}"
    else:
        assert last is None
    assert store.integrity_check() == "ok"
    return ids


def dump_db(path: Path) -> dict[str, Any]:
    """Every table of a closed database file, plus its applied LSN (read-only, for before/after checks)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = {}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for name in names:
            out[name] = sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {name}"))
        out["applied_lsn"] = int(conn.execute("SELECT value FROM _meta WHERE key='applied_lsn'").fetchone()[0])
        return out
    finally:
        conn.close()


def file_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of every file in a directory, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def record_offsets(path: Path) -> list[logfile.Record]:
    """The valid records of a generation file."""
    out: list[logfile.Record] = []
    for item in logfile.iter_records(path.read_bytes()):
        if isinstance(item, tuple):
            break
        out.append(item)
    return out


def patch_file(path: Path, offset: int, xor: int = 0x01) -> None:
    """Flip bits of one byte of a (possibly read-only, closed) log file in place."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= xor
    path.write_bytes(bytes(data))


def abandon(store: Store) -> None:
    """Drop an open store as a crash would: close its files and release the lock, no checkpoint."""
    store._close_handles()
    store.lock.release()
    store._closed = True


def commit_request(store: Store, rid: int, nattrs: int = 2, payload: bytes = b"") -> None:
    """One transaction: a request row plus ``nattrs`` attribute rows."""
    with store.transaction() as tx:
        tx.put("request", {"request_id": rid, "disposition": 9, "disposition_message": f"tx{rid}",
                           "raw_request": payload or None})
        for j in range(nattrs):
            tx.put("attribute", {"request_id": rid, "name": f"a{j}", "value": f"{rid}:{j}"})


def wait_line(proc: subprocess.Popen[bytes], want: bytes, timeout: float = 30.0) -> None:
    """Wait until the child prints ``want`` on stdout (or fail)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited ({proc.wait()}) before printing {want!r}")
        if line.strip() == want:
            return
    raise AssertionError(f"child did not print {want!r}")


def log_end(path: Path) -> int:
    """Offset where the records of a generation end (the file may be preallocated past it)."""
    res, _ = logfile.scan(path, None)
    return res.end


def write_at_end(path: Path, data: bytes) -> int:
    """Write ``data`` right after the last record, where the next append goes (as a crash mid-append
    leaves it); returns that offset. A preallocated file keeps its size."""
    end = log_end(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(data)
    return end


def cut_to_records(path: Path) -> int:
    """Drop a generation's preallocated room, as for a generation never preallocated; returns its size."""
    end = log_end(path)
    os.chmod(path, 0o644)
    os.truncate(path, end)
    return end
