"""``init --force`` on an existing home: never destroys a CA (issue 9, finding 6).

A home whose database holds issued certificates is replaced only when the operator names the CA
(``confirm_name``, typed at the CLI prompt or given with ``--confirm-name``); a database that cannot be
read counts as holding some. Whatever the count, the old home's items are moved aside, inside the home, to
``HOME/.replaced-<UTC time>/`` (0700: it holds the old key), never deleted. Inside the home rather than
beside it: same file system (a rename, even when the home is a mount point), and writable by the owner.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from .. import config as config_mod
from ..errors import ERROR_FILE_EXISTS, ERROR_SHARING_VIOLATION, CertSrvError, Conflict
from ..fsutil import HomeLock, fsync_dir, make_dirs
from ..home import Home
from ..store import DATABASE_ERRORS, Store
from ..store.schema import DISP_ISSUED, DISP_REVOKED

REPLACED_PREFIX = ".replaced-"
_OPEN_ERRORS: tuple[type[Exception], ...] = (OSError, *DATABASE_ERRORS)  # a home whose database is gone


class ConfirmationRequired(Conflict):
    """The home holds a CA with issued certificates (or one that cannot be read): naming it is required.

    :param ca_name: the name the operator must type.
    """

    def __init__(self, hresult: int, function: str, message: str, ca_name: str = "") -> None:
        super().__init__(hresult, function, message)
        self.ca_name = ca_name


def _existing_ca(h: Home) -> tuple[str, int | None]:
    """The existing CA's name and its number of issued (incl. revoked) certificates; None = cannot tell."""
    try:
        name = config_mod.load(h.root).ca.name
    except CertSrvError:
        name = ""
    if h.restore_registration.exists():  # opening the store would run the registered restore
        return name, None
    try:
        store = Store.open(h.root)
    except CertSrvError as e:
        if e.hresult == ERROR_SHARING_VIOLATION:
            raise
        return name, None
    except _OPEN_ERRORS:  # not a database any more: it may still have been one that issued
        return name, None
    try:
        issued = sum(store.count("request", [("disposition", "=", d)]) for d in (DISP_ISSUED, DISP_REVOKED))
        return name or store.name, issued
    finally:
        store.close()


def move_old_home_aside(h: Home, items: tuple[str, ...], *, confirm_name: str | None) -> Path:
    """Check the confirmation, then move the old home's ``items`` to ``HOME/.replaced-<UTC time>/``.

    :param h: the home.
    :param items: names of the home's items (files or directories) to move.
    :param confirm_name: the CA name as the operator typed it (None: not given).
    :returns: the directory now holding the old items.
    :raises ConfirmationRequired: issued certificates exist (or cannot be counted) and the name does not match.
    """
    name, issued = _existing_ca(h)
    if (issued is None or issued > 0) and (confirm_name is None or confirm_name != name):
        what = "a database that cannot be read" if issued is None else f"{issued} issued certificate(s)"
        typed = "" if confirm_name is None else f"the name given ({confirm_name!r}) is not the CA's; "
        raise ConfirmationRequired(
            ERROR_FILE_EXISTS, str(h.root),
            f"{typed}this home holds CA {name!r} with {what}; to replace it, confirm by typing its name "
            f"(certsrv init --force, or --confirm-name {name!r}); its files are then moved aside, not deleted",
            name)
    aside = h.root / (REPLACED_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    with HomeLock(h.root, "init --force"):  # no service may start while the items move
        make_dirs(aside)
        for item in (*items, "audit.log"):
            p = h.root / item
            if p.exists() or p.is_symlink():
                os.replace(p, aside / item)
        fsync_dir(aside)
        fsync_dir(h.root)
    return aside
