"""The restore side of the certbcli API (spec §2.12–2.17, §3.3) and the planned restore of backup sets.

The certbcli restore functions act on a local, stopped CA home (spec §3.3 step 2). A
:class:`RestoreContext` holds the home's lock for its whole life, so the CA cannot start in the
middle of a restore and two restores cannot interleave; a running CA holds that lock, so
``restore_prepare`` fails with ERROR_SHARING_VIOLATION (0x80070020, as PowerShell reports).
Registrations are kept in ``HOME/system/restore.json`` (:mod:`pycertsrv.store.registration`);
the CA performs the hard recovery at its next start.

:func:`plan_restore` / :func:`run_restore` are ``certsrv restore``: a full set and its
incrementals are checked, ordered and chained, the files placed, the sets registered and the
registration completed — completed last, so an interrupted restore leaves a home the CA refuses
to start rather than one holding part of the data.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_DIRECTORY,
    ERROR_INVALID_HANDLE,
    S_OK,
    CertSrvError,
    InvalidArgument,
    SequenceError,
)
from ..fsutil import (
    HomeLock,
    make_dirs,
)
from ..home import Home, check_owner
from ..spec import (
    CSRESTORE_TYPE_FULL,
    CSRESTORE_TYPE_MASK,
    TAG_CERTSERVER_DATABASE,
    TAG_CHECKPOINT_DIR,
    TAG_LOG_DIR,
)
from ..store import db_file_name
from ..store import registration as reg_mod

# ---------------------------------------------------------------- the certbcli restore functions


@dataclass
class RestoreContext:
    """A restore session on a local home (the ``HCSBC`` of CertSrvRestorePrepare); holds the home lock.

    :param home: the CA home being restored.
    :param flags: the CSRESTORE_TYPE_* flags given to prepare.
    :param force: replace a registration another (dead) context left uncompleted.
    """

    home: Home
    flags: int
    force: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    registered: bool = False
    closed: bool = False
    _lock: HomeLock | None = field(default=None, repr=False)

    def __enter__(self) -> RestoreContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            restore_end(self)


def _is_local_name(name: str) -> bool:
    n = name.lower().strip("\\/")
    names = {"", ".", "localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    return n in names or n.split(".")[0] == socket.gethostname().lower().split(".")[0]


def resolve_restore_home(server: str | os.PathLike[str] | None, home: Path | str | Home | None = None) -> Home:
    """The local home a restore acts on: ``home``, a path, ``unix:SOCKET``, or this machine's name (default home).

    :param server: what CertSrvRestorePrepare was given (a server name, config string ``HOST\\CA`` or a path).
    :param home: an explicit home, which wins.
    """
    if home is not None:
        return home if isinstance(home, Home) else Home.at(home)
    if server is None:
        return Home.at(None)
    s = os.fspath(server)
    if s.startswith("unix:"):
        return Home.at(Path(s[5:]).parent)
    if "/" in s:
        return Home.at(s)
    host = s.split("\\")[0]
    if _is_local_name(host):
        return Home.at(None)
    # spec §2.19: the restore functions have no wire counterpart — a restore acts on this machine only.
    raise InvalidArgument(E_INVALIDARG, "CertSrvRestorePrepare",
                          f"{s!r} is not this machine: a restore acts on a local, stopped CA home")


def restore_prepare(server: str | os.PathLike[str] | None = None, restore_flags: int = CSRESTORE_TYPE_FULL, *,
                    home: Path | str | Home | None = None, force: bool = False) -> RestoreContext:
    """CertSrvRestorePrepare (spec §2.13): open a restore context on a local, stopped home.

    :param server: machine name, ``HOST\\CA`` config string, ``unix:SOCKET`` or home path (None: default home).
    :param restore_flags: CSRESTORE_TYPE_FULL (CATCHUP accepted; ONLINE is outside the mask).
    :param home: the home to restore (wins over ``server``).
    :param force: allow replacing a registration an earlier, dead context left uncompleted.
    """
    if not isinstance(restore_flags, int) or restore_flags == 0 or restore_flags & ~CSRESTORE_TYPE_MASK:
        raise InvalidArgument(E_INVALIDARG, "CertSrvRestorePrepare",
                              f"restore flags 0x{int(restore_flags) & 0xFFFFFFFF:X} are not in CSRESTORE_TYPE_MASK")
    h = resolve_restore_home(server, home)
    if h.root.exists() and not h.root.is_dir():
        raise InvalidArgument(ERROR_DIRECTORY, str(h.root), "the home exists and is not a directory")
    check_owner(h.root)  # another user's home: one line naming its owner (issue 9)
    make_dirs(h.root)  # a new home is private (issue 9)
    lock = HomeLock(h.root, "restore")
    # spec §3.3 step 2: the CA must be stopped; a running CA holds the lock -> ERROR_SHARING_VIOLATION.
    lock.acquire()
    return RestoreContext(home=h, flags=restore_flags, force=force, _lock=lock)


def _check_ctx(ctx: RestoreContext, function: str) -> None:
    if not isinstance(ctx, RestoreContext) or ctx.closed:
        raise InvalidArgument(ERROR_INVALID_HANDLE, function, "not an open restore context (ended, or never prepared)")


def _db_location(home: Home) -> Path | None:
    if home.db_dir.is_dir():
        dbs = sorted(p for p in home.db_dir.iterdir() if p.suffix == ".db" and p.is_file())
        if dbs:
            return dbs[0]
    try:
        return home.db_dir / db_file_name(config_mod.load(home.root).ca.name)
    except CertSrvError:
        return None


def restore_get_database_locations(ctx: RestoreContext) -> list[str]:
    """CertSrvRestoreGetDatabaseLocations (spec §2.12) on a restore context: the local home's locations.

    Spec §6 item 9 leaves the offline answer open: we return where this home keeps its database
    (when it has or is configured for one), its log directory and its checkpoint directory.
    """
    _check_ctx(ctx, "CertSrvRestoreGetDatabaseLocations")
    out: list[str] = []
    db = _db_location(ctx.home)
    if db is not None:
        out.append(TAG_CERTSERVER_DATABASE + str(db))
    out.append(TAG_LOG_DIR + str(ctx.home.log_dir))
    out.append(TAG_CHECKPOINT_DIR + str(ctx.home.system_dir))
    return out


def _register(ctx: RestoreContext, function: str, via: str, checkpoint_path: str | None, log_path: str | None,
              restore_map: list[tuple[str, str]] | None, backup_log_path: str | None, gen_low: int, gen_high: int,
              until_us: int | None, identity: str | None) -> None:
    _check_ctx(ctx, function)
    reg_mod.register(ctx.home.root, context=ctx.id, checkpoint_path=checkpoint_path, log_path=log_path,
                     restore_map=restore_map, backup_log_path=backup_log_path, gen_low=gen_low, gen_high=gen_high,
                     until_us=until_us, identity=identity, force=ctx.force, via=via, function=function)
    ctx.registered = True


def restore_register(ctx: RestoreContext, checkpoint_path: str | None, log_path: str | None,
                     restore_map: list[tuple[str, str]] | None, backup_log_path: str | None, gen_low: int,
                     gen_high: int, *, until_us: int | None = None, identity: str | None = None) -> None:
    """CertSrvRestoreRegister (spec §2.14): register a restored set for the CA's next start.

    :param ctx: the restore context.
    :param checkpoint_path: the checkpoint directory (0x83 location) or None.
    :param log_path: the live log directory (0x82 location) or None.
    :param restore_map: ``[(backup_db_name, new_db_name)]`` for the full set; None for an incremental.
    :param backup_log_path: the directory holding the restored generations.
    :param gen_low: lowest generation restored.
    :param gen_high: highest generation restored.
    :param until_us: point in time: stop the replay before the first record later than this (µs since epoch).
    :param identity: the database identity of the set (checked at recovery).
    """
    _register(ctx, "CertSrvRestoreRegister", "register", checkpoint_path, log_path, restore_map, backup_log_path,
              gen_low, gen_high, until_us, identity)


def restore_register_through_file(ctx: RestoreContext, checkpoint_path: str | None, log_path: str | None,
                                  restore_map: list[tuple[str, str]] | None, backup_log_path: str | None,
                                  gen_low: int, gen_high: int, *, until_us: int | None = None,
                                  identity: str | None = None) -> None:
    """CertSrvRestoreRegisterThroughFile (spec §2.15): same as :func:`restore_register`, recorded as via file."""
    _register(ctx, "CertSrvRestoreRegisterThroughFile", "file", checkpoint_path, log_path, restore_map,
              backup_log_path, gen_low, gen_high, until_us, identity)


def restore_register_complete(ctx: RestoreContext, hr_restore_state: int = S_OK) -> None:
    """CertSrvRestoreRegisterComplete (spec §2.16): S_OK completes the registration; any other hr fails it.

    :param ctx: a context that registered.
    :param hr_restore_state: the outcome of the restore (S_OK when every file was placed).
    """
    function = "CertSrvRestoreRegisterComplete"
    _check_ctx(ctx, function)
    if not ctx.registered:
        raise SequenceError(E_UNEXPECTED, function, "this restore context has not registered a restore")
    reg_mod.complete(ctx.home.root, context=ctx.id, hr=hr_restore_state, function=function)


def restore_end(ctx: RestoreContext) -> None:
    """CertSrvRestoreEnd (spec §2.17): end the context and release the home; an uncompleted registration stays."""
    _check_ctx(ctx, "CertSrvRestoreEnd")
    ctx.closed = True
    if ctx._lock is not None:
        ctx._lock.release()
        ctx._lock = None


def restore_status(home: Path | str | Home | None = None) -> dict[str, Any]:
    """The registration of a home (or the last finished restore) as plain data."""
    h = home if isinstance(home, Home) else Home.at(home)
    reg = reg_mod.read_registration(h.root)
    return {"home": str(h.root), "registration": reg.to_json() if reg else None,
            "last_restore": reg_mod.last_restore(h.root)}


__all__ = [
    "RestoreContext",
    "resolve_restore_home",
    "restore_end",
    "restore_get_database_locations",
    "restore_prepare",
    "restore_register",
    "restore_register_complete",
    "restore_register_through_file",
    "restore_status",
]
