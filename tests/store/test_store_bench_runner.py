"""The bench runner (``python -m bench``): lists benches, skips missing modules with a note, rejects unknown names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*code_or_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_list_and_unknown_name() -> None:
    out = run("-m", "bench", "--list")
    assert out.returncode == 0
    assert out.stdout.split() == ["store", "ca", "service", "backup", "restore", "archive", "pg", "reqkey", "ha"]
    bad = run("-m", "bench", "nosuch")
    assert bad.returncode == 2 and "unknown bench 'nosuch'" in bad.stderr


def test_missing_module_is_skipped_with_a_note() -> None:
    out = run("-c", "from bench.__main__ import run_one; print(run_one('nosuch', True))")
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and "bench/nosuch_bench.py does not exist yet" in out.stdout


def test_flatten_and_table() -> None:
    out = run("-c", "from bench.common import flatten, table; "
                    "print(table(flatten({'a': {'b': 1234567, 'c': [{'d': 0.5}]}, 'ok': True}), ('metric', 'value')))")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert ["a.b", "1,234,567"] in [line.split() for line in lines]
    assert ["a.c[0].d", "0.5"] in [line.split() for line in lines]
