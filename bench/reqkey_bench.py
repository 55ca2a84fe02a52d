"""What a request key costs a submit (issue 14): durable in-process issuance (``Authority.submit``, fsync'd)
without a key and with one, measured in the same run, in alternating rounds (a burst of load from elsewhere hits
both alike); 1 and 4 threads.

A keyed submit adds two indexed reads of the ``attribute`` table (the answer to a retry before anything is
signed, and the writer's check under the key's claim before it is logged) and one attribute row. Also measured:
one lookup alone (a key that exists, one that does not) on the database the run filled, and the rate at which a
retried submit is answered (no signing, nothing written).

``python -m bench reqkey [--quick]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from pycertsrv.ca import Authority
from pycertsrv.ca.keyclaims import find_request
from pycertsrv.requestkey import new_request_key

from .ca_bench import _csrs
from .ca_bench import _rate as _rate_and_cpu
from .common import work_dir

KINDS = ("nokey", "key")


def _rate(fn: Any, n: int, threads: int) -> float:
    """Issuances per second of ``fn(0..n-1)`` on ``threads`` threads (ca_bench's loop, CPU time dropped)."""
    return _rate_and_cpu(fn, n, threads)[0]


def _lookup_us(a: Authority, keys: list[str], reps: int) -> dict[str, float]:
    present = [keys[i % len(keys)] for i in range(reps)]
    absent = [new_request_key() for _ in range(reps)]
    out = {}
    for name, ks in (("present", present), ("absent", absent)):
        t0 = time.perf_counter()
        for k in ks:
            find_request(a.store, k)
        out[name] = round((time.perf_counter() - t0) / reps * 1e6, 1)
    return out


def _measure(a: Authority, csrs: list[bytes], threads: int, rounds: int, quick: bool) -> dict[str, Any]:
    n = len(csrs)
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    keys: list[str] = []
    for _ in range(rounds):
        batch = [new_request_key() for _ in range(n)]
        keys += batch
        rates["nokey"].append(_rate(lambda i: a.submit(csrs[i]), n, threads))
        rates["key"].append(_rate(lambda i: a.submit(csrs[i], request_key=batch[i]), n, threads))  # noqa: B023
    retried = _rate(lambda i: a.submit(csrs[i], request_key=keys[i]), n, threads)
    assert a.store.count("request") == 2 * n * rounds, "a retried submit wrote a request"
    row: dict[str, Any] = {}
    for kind in KINDS:
        row[f"{kind}_best"] = round(max(rates[kind]), 1)
        row[f"{kind}_median"] = round(statistics.median(rates[kind]), 1)
    row["ratio_best"] = round(row["key_best"] / row["nokey_best"], 3)
    row["ratio_median"] = round(row["key_median"] / row["nokey_median"], 3)
    row["extra_us_median"] = round(1e6 / row["key_median"] - 1e6 / row["nokey_median"], 1)
    row["retry_answered_per_s"] = round(retried, 1)
    if threads == 1:
        row["lookup_us"] = _lookup_us(a, keys, 200 if quick else 2000)
        row["rows"] = a.store.count("request")
    return row


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; returns the rates per kind and thread count, the ratios and the lookup cost."""
    n = 100 if quick else 600
    rounds = 2 if quick else 5
    csrs = _csrs("ec-p256", n)
    out: dict[str, Any] = {"benchmark": "request_key_cost", "n": n, "rounds": rounds}
    with work_dir("reqkey") as tmp:
        for threads in (1, 4):
            a = Authority.init(tmp / f"t{threads}", "Bench Key CA")
            try:
                row = _measure(a, csrs, threads, rounds, quick)
            finally:
                a.close()
            out[f"{threads}t"] = row
            print(f"reqkey_bench {threads}t: no key {row['nokey_median']:.0f}/s, key {row['key_median']:.0f}/s "
                  f"(median of {rounds}; ratio {row['ratio_median']:.3f}, {row['extra_us_median']:+.0f} us per "
                  f"issuance); a retry answered {row['retry_answered_per_s']:.0f}/s"
                  + (f"; one lookup {row['lookup_us']['present']} us found, {row['lookup_us']['absent']} us "
                     f"absent, {row['rows']} rows" if threads == 1 else ""))
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
