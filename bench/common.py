"""Helpers shared by the bench modules: work directories on a real disk, timing, tables, flattening."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one bench, removed afterwards.

    It lives under ``$BENCH_TMPDIR`` (default: the system temp dir), which must be a real disk:
    the benches measure fsync.
    """
    base = os.environ.get("BENCH_TMPDIR") or None
    d = Path(tempfile.mkdtemp(prefix=f"pycertsrv-{prefix}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ram_dir(prefix: str) -> contextlib.AbstractContextManager[Path]:
    """Like :func:`work_dir` but on tmpfs when there is one (for building inputs fast, never for timing fsync)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return _tmp_under(shm, prefix)
    return work_dir(prefix)


@contextlib.contextmanager
def _tmp_under(base: Path, prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"pycertsrv-{prefix}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_certsrv(home: Path, log: Path, *extra: str, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """``certsrv serve --home HOME`` in a subprocess (output appended to ``log``), once it answers on its socket.

    Raises RuntimeError with the log's tail when it exits or does not come up within ``timeout``.
    """
    from pycertsrv.client import Client
    from pycertsrv.errors import CertSrvError

    args = [sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(home), "--log-level", "warning", *extra]
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=f)
    deadline = time.monotonic() + timeout
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
            raise RuntimeError("service did not start: " + log.read_text()[-2000:])
        time.sleep(0.05)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of nested dicts/lists as ``(dotted.key[i], value)`` pairs, in order."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value) and len(value) <= 8:
            out.append((prefix, ", ".join(fmt(v) for v in value)))
        else:
            for i, v in enumerate(value):
                out += flatten(v, f"{prefix}[{i}]")
    else:
        out.append((prefix, value))
    return out


def fmt(v: Any) -> str:
    """A value for a table cell: floats rounded, thousands separated."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[tuple[Any, ...]], headers: tuple[str, ...]) -> str:
    """A plain-text table with a header rule."""
    cells = [tuple(h for h in headers)] + [tuple(fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in cells[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
