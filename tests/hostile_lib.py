"""Hostile targets for the CLI tests: tmpfs mounts made read-only or full. The second uid, the real ``certsrv``
command run as root or as that uid, and its services are in ``tests/support.py``.

Needs root (mount, useradd, setpriv): the sandbox and CI run the suite as root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

# One refusal line (the standard): subject, the Win32 HRESULT in hex with its symbolic name, a message.
ONE_LINE = re.compile(r"^certsrv: .+: 0x8007[0-9A-F]{4} [A-Z_]+: .+$")


class Mounts:
    """tmpfs mounts made by a test, all unmounted at teardown (also when the test failed)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str, mode: str = "0777") -> Path:
        """Mount a tmpfs of ``size`` at ``path`` (created) with root directory ``mode``."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path)], check=True)
        self.points.append(path)
        return path

    @staticmethod
    def read_only(path: Path) -> None:
        """Remount ``path`` read-only."""
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    @staticmethod
    def fill(path: Path) -> Path:
        """Write a filler file into ``path`` until its file system refuses with ENOSPC."""
        filler = path / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 64 << 10, 4 << 10, 1):  # down to the last byte of the last page
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        return filler

    def unmount_all(self) -> None:
        """Teardown: unmount in reverse order (lazily if something still holds one)."""
        for p in reversed(self.points):
            r = subprocess.run(["umount", str(p)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(p)], capture_output=True)
        self.points.clear()


@contextlib.contextmanager
def mounts() -> Iterator[Mounts]:
    """A :class:`Mounts` that is always unmounted."""
    m = Mounts()
    try:
        yield m
    finally:
        m.unmount_all()


def copy_tree_into(src: Path, dest: Path) -> None:
    """Copy the contents of ``src`` into the existing directory ``dest``."""
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dest / p.name)
        else:
            shutil.copy2(p, dest / p.name)


def leftovers(d: Path) -> list[str]:
    """Temp files a failed write could leave in ``d`` (atomic_write's ``.X.tmp-*``, a restore's ``.X.restoring``)."""
    return sorted(p.name for p in d.rglob("*") if ".tmp-" in p.name or p.name.endswith(".restoring"))
