"""Several nodes, one CA (issue 14), each figure with its baseline from the same run, on a PostgreSQL primary +
streaming standby this bench starts itself (``tests/pg_support.py``) and two ``certsrv serve`` nodes
(``tests/ha/harness.py``):

- ``issuance``: issuances/s through the writer node (8 load clients on its socket) with the standby
  synchronous (``synchronous_commit = on``: each commit flushed on both servers) vs asynchronous (the same
  pair, ``synchronous_standby_names`` emptied and reloaded), rounds alternating, best of each;
- ``failover_kill``: seconds from SIGKILL of the writer node until a standby says it is the writer
  (``takeover``) and until the first write is answered through a client given every node
  (``Client("unix:a,unix:b")``, ``first_write``), median and worst over the trials (the standby sees the dead
  holder's pid on this host, so it need not wait for the lease to expire; it polls every ``lease_ttl / 3``);
- ``failover_frozen``: the same when the writer is SIGSTOPped (a host that vanished: the lease must expire),
  against ``lease_ttl``; the client's per-request timeout (5 s) adds to ``first_write``: a frozen writer
  accepts connections and never answers;
- ``failover_pg``: seconds from ``-m immediate`` of the PostgreSQL primary (the standby promoted at once) to
  the first write answered again.

Run alone: ``python -m bench.ha_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .common import work_dir
from .loadgen import Target, run_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LEASE_TTL = 10.0  # issue 14: the default lease is at most 10 s; the bench measures with the default


def _bodies(n: int) -> list[bytes]:
    from support import make_csr

    return [json.dumps({"csr": make_csr(f"b{i}-{uuid.uuid4().hex[:6]}.example.com").decode()}).encode()
            for i in range(n)]


def _set_sync(pair: Any, on: bool) -> None:
    """Make the standby synchronous or not (primary's synchronous_standby_names), and wait until it is so."""
    import psycopg

    from pg_support import STANDBY_NAME

    with psycopg.connect(pair.primary.url(), autocommit=True) as c:
        c.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME if on else ''}'")
        c.execute("SELECT pg_reload_conf()")
    want = "sync" if on else "async"
    deadline = time.monotonic() + 30
    while not any(y == want for _, _, y in pair.replication()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the standby did not become {want}: {pair.replication()}")
        time.sleep(0.05)


def bench_issuance(pair: Any, base: Path, n: int, rounds: int) -> dict[str, Any]:
    """Issuances/s through the writer node, standby synchronous vs asynchronous (rounds alternate)."""
    from ha.harness import HA

    ha = HA(pair, base / "iss", nodes=2, lease_ttl=LEASE_TTL, name="HA Bench CA", workers=None).start()
    try:
        writer = ha.wait_writer()
        target = Target(unix=str(writer.service.socket), path="/ca/requests")
        run_load(target, _bodies(max(20, n // 10)), 8)  # warm-up
        best: dict[str, dict[str, Any]] = {}
        for _ in range(rounds):
            for mode in ("sync", "async"):
                _set_sync(pair, mode == "sync")
                r = run_load(target, _bodies(n), 8)
                if r["failed"]:
                    raise RuntimeError(f"{mode}: {r['failed']} issuances failed: {r['failures']}")
                if mode not in best or r["rate"] > best[mode]["rate"]:
                    best[mode] = r
        _set_sync(pair, True)
    finally:
        ha.close()
    return {"sync_per_s": best["sync"]["rate"], "async_per_s": best["async"]["rate"],
            "sync_p99_ms": best["sync"]["p99_ms"], "async_p99_ms": best["async"]["p99_ms"],
            "sync_over_async": round(best["sync"]["rate"] / best["async"]["rate"], 3), "n": n, "rounds": rounds}


def _first_write(ha: Any, t0: float, timeout: float = 120.0, request_timeout: float = 5.0) -> float:
    """Seconds from ``t0`` until a submit through every endpoint is answered. ``request_timeout``: the client's
    per-request timeout (a frozen writer accepts connections and never answers: the client waits that long
    before it tries the next node)."""
    from ha.harness import submit
    from pycertsrv.errors import CertSrvError
    from support import make_csr

    deadline = time.monotonic() + timeout
    with ha.client(timeout=request_timeout) as c:
        while True:
            try:
                submit(c, make_csr(f"f-{uuid.uuid4().hex[:8]}.example.com"), uuid.uuid4().hex)
                return time.monotonic() - t0
            except CertSrvError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _stats(xs: list[float]) -> dict[str, Any]:
    return {"trials": len(xs), "median_s": round(statistics.median(xs), 3), "worst_s": round(max(xs), 3),
            "best_s": round(min(xs), 3)}


def bench_node_failover(pair: Any, base: Path, trials: int, frozen: bool) -> dict[str, Any]:
    """Kill (or freeze) the writer node; time until another node says it is the writer (``takeover``) and until
    a client given every node has a write answered (``first_write``, measured at the same time from another
    thread). The old node comes back as a standby (restarted, or thawed: fenced)."""
    import threading

    from ha.harness import HA, until

    ha = HA(pair, base / ("frz" if frozen else "kill"), nodes=2, lease_ttl=LEASE_TTL, name="HA Bench CA").start()
    takeover: list[float] = []
    first: list[float] = []
    try:
        for _ in range(trials):
            old = ha.wait_writer()
            _first_write(ha, time.monotonic())  # the cluster answers now
            t0 = time.monotonic()
            if frozen:
                old.freeze()
            else:
                old.kill()
            out: list[float] = []
            writer = threading.Thread(target=lambda o=out, t=t0: o.append(_first_write(ha, t)))
            writer.start()
            ha.wait_writer(other_than=old, timeout=120)
            takeover.append(time.monotonic() - t0)
            writer.join()
            first.append(out[0])
            if frozen:
                old.thaw()  # fenced: it goes on as a standby once it looks (its next renewal, or a commit)
                until("the thawed writer to step down", lambda o=old: not o.is_writer(), timeout=120)
            else:
                old.start()  # back, as a standby
    finally:
        ha.close()
    return {"takeover": _stats(takeover), "first_write": _stats(first), "lease_ttl_s": LEASE_TTL,
            "client_request_timeout_s": 5.0}


def bench_pg_failover(base: Path, trials: int) -> dict[str, Any]:
    """Stop the PostgreSQL primary (-m immediate), promote the standby at once, time the first answered write."""
    from ha.harness import HA
    from pg_support import pair_context, promote, stop_immediate

    times: list[float] = []
    for k in range(trials):
        with pair_context(sync="on") as pair:
            ha = HA(pair, base / f"pg{k}", nodes=2, lease_ttl=LEASE_TTL, name="HA Bench CA").start()
            try:
                _first_write(ha, time.monotonic())
                t0 = time.monotonic()
                stop_immediate(pair.primary)
                promote(pair.standby)
                times.append(_first_write(ha, t0))
            finally:
                ha.close()
    return _stats(times)


def run(quick: bool = False) -> dict[str, Any]:
    """All four, each on its own CA; the pair is shared where nothing is promoted."""
    import os

    from pg_support import pair_context, pg_bindir

    if pg_bindir() is None:
        raise RuntimeError("PostgreSQL server binaries not found: install Debian's postgresql package")
    with work_dir("ha") as d, pair_context(sync="on") as pair:
        os.chmod(d, 0o755)
        issuance = bench_issuance(pair, d, 100 if quick else 600, 1 if quick else 3)
        kill = bench_node_failover(pair, d, 3 if quick else 10, frozen=False)
        frozen = bench_node_failover(pair, d, 1 if quick else 3, frozen=True)
    with work_dir("ha-pg") as d:
        os.chmod(d, 0o755)
        pg = bench_pg_failover(d, 1 if quick else 3)
    return {"issuance": issuance, "failover_kill": kill, "failover_frozen": frozen, "failover_pg": pg}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
