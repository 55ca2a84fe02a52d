"""Run benchmarks: ``python -m bench [NAME ...] [--quick] [--list]`` (``make bench`` runs them all).

Each bench is a module ``bench/<name>_bench.py`` exposing ``run(quick: bool) -> dict``. The runner
calls it, prints the result as a table (nested values flattened to dotted keys), writes
``bench/results/<name>.json`` and ends with a summary; a result's ``"pass"`` key (True/False) is its
verdict against its targets. To add a bench, add its name to ``BENCHES``; names whose module does not
exist yet are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from .common import RESULTS, flatten, table

BENCHES = ["store", "ca", "service", "backup", "restore", "archive", "pg", "reqkey", "ha"]


def run_one(name: str, quick: bool) -> tuple[str, float, Any]:
    """Import and run one bench; returns (status, seconds, result or error text)."""
    modname = f"bench.{name}_bench"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return "skipped", 0.0, f"bench/{name}_bench.py does not exist yet"
        raise
    t0 = time.perf_counter()
    try:
        result = mod.run(quick=quick)
    except Exception:
        return "error", time.perf_counter() - t0, traceback.format_exc()
    return "done", time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benches, print tables, write JSON; exit 1 if one errored."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"benches to run (default: all of {', '.join(BENCHES)})")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not a measurement)")
    ap.add_argument("--list", action="store_true", help="list the benches and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name in BENCHES:
            print(name)
        return 0
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown bench {unknown[0]!r}; known: {', '.join(BENCHES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, str, str, float]] = []
    for name in args.names or BENCHES:
        print(f"=== {name}{' (quick)' if args.quick else ''}", flush=True)
        status, seconds, result = run_one(name, args.quick)
        if status == "skipped":
            print(f"  skipped: {result}")
            summary.append((name, status, "", seconds))
            continue
        if status == "error":
            print(result, file=sys.stderr)
            summary.append((name, status, "", seconds))
            continue
        verdict = result.get("pass") if isinstance(result, dict) else None
        print(table(flatten(result), ("metric", "value")))
        doc = {"bench": name, "quick": args.quick, "finished": datetime.now(UTC).isoformat(),
               "seconds": round(seconds, 3), "host": {"python": platform.python_version(),
               "machine": platform.machine(), "cpus": os.cpu_count()}, "result": result}
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"  -> {out.relative_to(RESULTS.parent.parent)}")
        summary.append((name, status, "" if verdict is None else ("PASS" if verdict else "MISS"), seconds))
    print("=== summary")
    print(table([(n, s, v, round(t, 1)) for n, s, v, t in summary], ("bench", "status", "targets", "seconds")))
    return 1 if any(s == "error" for _, s, _, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
