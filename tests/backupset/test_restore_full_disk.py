"""Issue 10 finding 2: a restore onto a full file system (a small tmpfs, the real ``certsrv`` command) either
leaves nothing behind, or leaves an unfinished restore that ``certsrv serve`` and ``certsrv restore`` name,
with the command that finishes it; once space is freed, that command finishes the restore and the CA serves
every row of the set."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.ca import Authority
from pycertsrv.errors import ERROR_DISK_FULL
from pycertsrv.home import Home
from support import ONE_LINE, Service, certsrv, leftovers, make_csr, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs mounts need root (CI runs as root)")

ROWS = 150  # a database of a few hundred KB: the small files of a restore fit in the space left, it does not
FREE = 96 << 10  # bytes left free on the full file system


def run(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = certsrv(*args, "--home", str(home))
    assert r.returncode == (0 if ok else 1), (r.stdout, r.stderr)
    return r


def _rows(home: Path) -> list[tuple[int, str]]:
    """(request id, serial) of every row, read through the real CLI."""
    out = json.loads(run(home, "view", "--json").stdout)
    return [(r["request_id"], r["serial"]) for r in out]


@pytest.fixture(scope="module")
def backup_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[tuple[int, str]]]]:
    """A full set of a CA with ROWS issued certificates, its password file, and the rows."""
    tmp = tmp_path_factory.mktemp("fullset")
    src = tmp / "src"
    with Authority.init(src, "Full Disk CA") as a:
        for i in range(ROWS):
            a.submit(make_csr(f"d{i}.example.com"), requester="test")
    pw = tmp / "pw"
    pw.write_text("full-disk-password\n")
    svc = Service(Home.at(src)).start()
    try:
        run(src, "backup", str(tmp / "set"), "--password-file", str(pw), "--quiet")
        rows = _rows(src)
    finally:
        svc.ensure_stopped()
    assert len(rows) == ROWS
    assert os.path.getsize(next((tmp / "set" / "DataBase").glob("*.db"))) > 2 * FREE
    yield tmp / "set", pw, rows


def _leave_free(filler: Path, free: int) -> None:
    os.truncate(filler, os.path.getsize(filler) - free)


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert ONE_LINE.match(lines[0]), lines[0]
    return lines[0]


def _serve_rows(home: Path) -> list[tuple[int, str]]:
    svc = Service(Home.at(home)).start()
    try:
        return _rows(home)
    finally:
        assert svc.stop() == 0


def test_failed_restore_into_new_home_leaves_nothing(backup_set: tuple[Path, Path, list[tuple[int, str]]],
                                                      tmp_path: Path) -> None:
    the_set, pw, rows = backup_set
    with mounts() as m:
        disk = m.tmpfs(tmp_path / "disk", "16m")
        filler = m.fill(disk)
        _leave_free(filler, FREE)
        home = disk / "ca"
        r = run(home, "restore", str(the_set), "--password-file", str(pw), ok=False)
        line = _one_line(r.stderr)
        assert f"0x{ERROR_DISK_FULL:08X} ERROR_DISK_FULL:" in line and f"nothing was left in {home}" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing of the restore stays
        # Freed space: the same command now restores, and the CA serves every row of the set.
        filler.unlink()
        run(home, "restore", str(the_set), "--password-file", str(pw))
        assert _serve_rows(home) == rows


def test_failed_restore_over_a_home_is_named_and_finished(backup_set: tuple[Path, Path, list[tuple[int, str]]],
                                                          tmp_path: Path) -> None:
    the_set, pw, rows = backup_set
    with mounts() as m:
        disk = m.tmpfs(tmp_path / "disk", "16m")
        home = disk / "ca"
        run(home, "init", "--name", "Full Disk CA")  # the CA being replaced (say, a machine rebuilt)
        filler = m.fill(disk)
        _leave_free(filler, FREE)
        r = run(home, "restore", str(the_set), "--password-file", str(pw), "--force", ok=False)
        line = _one_line(r.stderr)
        assert f"0x{ERROR_DISK_FULL:08X} ERROR_DISK_FULL:" in line
        assert f"keeps an unfinished restore from {the_set}" in line
        assert leftovers(home) == []  # no half-copied database or temp file holds the space
        # serve names the unfinished restore, the set, and the command that finishes it.
        s = run(home, "serve", ok=False)
        line = _one_line(s.stderr)
        assert f"an unfinished restore from {the_set} was found" in line
        command = re.search(r"rerun `([^`]+)` to finish it", line)
        assert command is not None, line
        assert command.group(1) == f"certsrv restore {the_set} --home {home} --force"
        # restore without --force names it too, and refuses.
        r = run(home, "restore", str(the_set), "--password-file", str(pw), ok=False)
        assert "a restore is registered" in _one_line(r.stderr)
        # Freed space: the named command finishes the restore, and the CA serves every row of the set.
        filler.unlink()
        done = certsrv(*command.group(1).split()[1:], "--password-file", str(pw))
        assert done.returncode == 0, done.stderr
        assert _serve_rows(home) == rows
