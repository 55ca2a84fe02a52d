"""Crash-safe writes and the home lock, with a real second process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pycertsrv.errors import ERROR_SHARING_VIOLATION, Conflict
from pycertsrv.fsutil import HomeLock, atomic_write, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    atomic_write(p, b"one")
    atomic_write(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two"
    assert p.stat().st_mode & 0o777 == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]
    assert sha256_file(p) == "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"


def test_second_process_is_refused_with_holder_pid(tmp_path: Path) -> None:
    code = (
        "import sys,time; from pycertsrv.fsutil import HomeLock; "
        "l=HomeLock(sys.argv[1],'service'); l.acquire(); print('held',flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        lock = HomeLock(tmp_path)
        assert lock.is_held()
        with pytest.raises(Conflict) as ei:
            lock.acquire()
        assert ei.value.hresult == ERROR_SHARING_VIOLATION
        assert f"pid {child.pid}" in str(ei.value) and str(tmp_path) in str(ei.value)
    finally:
        child.kill()
        child.wait()
    with HomeLock(tmp_path) as lock:  # released by the kernel when the holder died
        assert lock.is_held()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_private_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    """Issue 9: files and directories of the home get exactly the mode asked for, whatever the umask."""
    import os
    import stat

    from pycertsrv.fsutil import PUBLIC_DIR, PUBLIC_FILE, copy_file, create_file, make_dirs

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    old = os.umask(umask)
    try:
        make_dirs(tmp_path / "a" / "b")
        make_dirs(tmp_path / "pub", PUBLIC_DIR)
        atomic_write(tmp_path / "a" / "f", b"x")
        atomic_write(tmp_path / "pub" / "g", b"y", PUBLIC_FILE)
        create_file(tmp_path / "a" / "b" / "db")
        copy_file(tmp_path / "a" / "f", tmp_path / "a" / "copy")
    finally:
        os.umask(old)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "pub")] == [0o700, 0o700, 0o755]
    assert [mode(tmp_path / p) for p in ("a/f", "a/b/db", "a/copy", "pub/g")] == [0o600, 0o600, 0o600, 0o644]
    assert (tmp_path / "a" / "copy").read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        create_file(tmp_path / "a" / "b" / "db")  # never replaces a file
