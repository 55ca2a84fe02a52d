"""Hostile targets for the CLI tests: copies into a target and what a failed write leaves. The tmpfs mounts
(read-only or full), the second uid, the real ``certsrv`` command run as root or as that uid, and its services
are in ``tests/support.py``.

Needs root (mount, useradd, setpriv): the sandbox and CI run the suite as root.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# One refusal line (the standard): subject, the Win32 HRESULT in hex with its symbolic name, a message.
ONE_LINE = re.compile(r"^certsrv: .+: 0x8007[0-9A-F]{4} [A-Z_]+: .+$")


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
