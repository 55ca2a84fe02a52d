"""A process killed (SIGKILL) before each durable step (every os.fsync / os.replace) of a restore and of
the hard recovery at the next start, then run again: the home ends as the correct CA or a clear refusal,
never a CA that starts with part of the data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from setlib import full_and_incremental, opened_state

from pycertsrv.ca import Authority
from support import short_home

PW = b"crash pw"

CHILD = r"""
import os, signal, sys
n, mode, home = int(sys.argv[1]), sys.argv[2], sys.argv[3]
count = [0]
def tick():
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
real_fsync, real_replace = os.fsync, os.replace
def fsync(fd):
    tick()
    return real_fsync(fd)
def replace(a, b):
    tick()
    return real_replace(a, b)
os.fsync, os.replace = fsync, replace
if mode == "restore":
    from pycertsrv.backupset.restore_plan import plan_restore
    from pycertsrv.backupset.restore_run import run_restore
    plan = plan_restore(sys.argv[4:], home=home, force=True, password=b"crash pw")
    run_restore(plan, password=b"crash pw")
else:
    from pycertsrv.store import Store
    Store.open(home).close()
print("STEPS", count[0])
"""


def child(n: int, mode: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(n), mode, str(home), *args], capture_output=True,
                          text=True, timeout=120)


def steps(out: subprocess.CompletedProcess[str]) -> int:
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split("STEPS")[1])


def sample(total: int, k: int = 12) -> list[int]:
    if total <= k:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (k - 1)) for i in range(k)})


@pytest.fixture(scope="module")
def sets() -> Iterator[dict[str, Any]]:
    home = short_home("crc")
    work = home.parent
    with Authority.init(home, "Crash Point CA") as a:
        want = full_and_incremental(a, work, PW, 10, 10)
    yield {"work": work, "want": want, "dirs": [str(work / "full"), str(work / "i1")]}
    shutil.rmtree(work, ignore_errors=True)


def test_kill_before_each_step_of_the_restore(sets: dict[str, Any]) -> None:
    work, want, dirs = sets["work"], sets["want"], sets["dirs"]
    total = steps(child(0, "restore", work / "count", *dirs))
    seen = []
    for n in sample(total):
        home = work / f"r{n}"
        out = child(n, "restore", home, *dirs)
        assert out.returncode == -9, out.stderr
        first = opened_state(home, want) if (home / "certsrv.toml").exists() else "no config yet"
        seen.append((n, first))
        if first != "ok":
            steps(child(0, "restore", home, *dirs))  # run again (with --force)
            assert opened_state(home, want) == "ok", seen
    assert any(s == "refused" for _, s in seen), seen  # the interesting middle was hit


def test_kill_before_each_step_of_the_recovery(sets: dict[str, Any]) -> None:
    work, want, dirs = sets["work"], sets["want"], sets["dirs"]
    pristine = work / "pristine"
    steps(child(0, "restore", pristine, *dirs))  # registered and completed, not yet recovered
    probe = work / "probe"
    shutil.copytree(pristine, probe)
    total = steps(child(0, "open", probe))
    for n in sample(total):
        home = work / f"o{n}"
        shutil.copytree(pristine, home)
        out = child(n, "open", home)
        assert out.returncode == -9, out.stderr
        assert opened_state(home, want) == "ok", n  # the next start redoes or finishes the recovery
        assert not (home / "system" / "restore.json").exists()
