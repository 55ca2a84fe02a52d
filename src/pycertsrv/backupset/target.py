"""Where a backup set may be written: never inside a CA home (issue 9 finding 5).

``certsrv backup $HOME/publish --force`` wrote the PKCS#12 and the whole database into the directory
the web server publishes. The writer refuses any set directory inside the home of the CA it talks
to (the home is learnt from the session's RestoreGetDatabaseLocations, spec §2.12) or inside the local
``--home``; ``--force`` does not override this.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import E_ACCESSDENIED, AccessDenied


def home_roots(locations: list[str]) -> list[Path]:
    """The CA home(s) named by RestoreGetDatabaseLocations: the parent of the log (0x82) and system (0x83)
    directories and of the database's directory ('D') — home.py's fixed layout HOME/logs, HOME/system, HOME/db."""
    roots: list[Path] = []
    for loc in locations:
        tag, path = loc[:1], loc[1:]
        if not path.startswith("/"):
            continue
        p = Path(path)
        root = p.parent.parent if tag == "D" else p.parent
        if root not in roots and root != Path("/"):
            roots.append(root)
    return roots


def refuse_inside_home(target: Path, roots: list[Path]) -> None:
    """Refuse a set directory inside a CA home (issue 9 finding 5: ``backup $HOME/publish`` put the PKCS#12
    and the database where the web server publishes). Symlinks are resolved on both sides; --force does not
    override this.

    :param target: the set directory (it may not exist yet).
    :param roots: the CA home directories.
    """
    real = Path(os.path.realpath(target))
    for root in roots:
        rroot = Path(os.path.realpath(root))
        if real == rroot or rroot in real.parents:
            raise AccessDenied(E_ACCESSDENIED, str(target),
                               f"is inside the CA home {rroot}: a backup set holds the CA key and the whole "
                               "database; choose a directory outside the home")


__all__ = ["home_roots", "refuse_inside_home"]
