"""Cleaning up after a failed ``certsrv restore`` (issue 10 finding 2).

A restore into a home it found missing or empty removes everything it made; over an existing home it
leaves the registration (failed, or uncompleted) that ``certsrv serve`` and the next ``certsrv restore``
name, with the command that finishes it (:func:`pycertsrv.store.registration.rerun_hint`). Either way no
half-copied file (``.X.restoring``, ``.X.tmp-*``) is left to hold the space of a full disk.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..errors import CertSrvError, from_oserror
from ..home import Layout
from ..store import registration as reg_mod


def failure(e: BaseException, root: Path) -> CertSrvError | None:
    """The error a failed restore reports (OSError mapped with its path); None to re-raise ``e`` as it is."""
    if isinstance(e, CertSrvError):
        return e
    if isinstance(e, OSError):
        return from_oserror(e, None if e.filename is not None else root, "restore failed")
    return None


def registration_or_none(root: Path) -> reg_mod.Registration | None:
    """The home's registration, or None (also when it is unreadable: the failure being reported wins)."""
    try:
        return reg_mod.read_registration(root)
    except CertSrvError:
        return None


def has_content(root: Path) -> bool:
    """Whether ``root`` holds anything besides its lock file (unreadable: assume it does, remove nothing)."""
    try:
        return any(p.name != Layout.LOCK for p in root.iterdir())
    except OSError:
        return True


def empty_home(root: Path) -> None:
    """Remove everything a restore put into a home it found missing or empty (the lock file stays: it is held)."""
    with contextlib.suppress(OSError):
        for p in root.iterdir():
            if p.name == Layout.LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def remove_made(made: list[Path]) -> None:
    """Remove the directories a restore created (deepest first), each only while it is empty."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            return


def discard_partial(*dirs: Path) -> None:
    """Remove the half-copied files of a failed placement (``.X.restoring`` copies) in ``dirs``, freeing their
    space."""
    for d in set(dirs):
        with contextlib.suppress(OSError):
            for p in d.iterdir():
                if p.name.startswith(".") and p.name.endswith(".restoring"):
                    with contextlib.suppress(OSError):
                        p.unlink()
