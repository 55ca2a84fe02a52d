"""The layout of a CA home directory (``--home``, env ``CERTSRV_HOME``).

::

    HOME/certsrv.toml        configuration
    HOME/.lock               flock held by the process that owns the home (store, service)
    HOME/db/<CA>.db          SQLite tables               (store)
    HOME/logs/edbXXXXXXXX.log log generations            (store)
    HOME/system/edb.chk      checkpoint                  (store)
    HOME/system/restore.json restore registration        (backup.restore)
    HOME/private/ca.key      CA private key, PKCS#8 PEM, 0600
    HOME/publish/            published ("dynamic") files: CA certificate, CRLs
    HOME/staging/            backup snapshots while a session runs
    HOME/certsrv.sock        the service's Unix socket
    HOME/audit.log           the service's audit log (JSON lines)

The home is private (issue 9): the home and every directory under it 0700, every file 0600 (closed log
generations 0400), except ``publish/`` (0755, files 0644), which is meant for web publication. With
``service.socket_group`` the home itself is 0710 with that group, so members can reach the socket (and
publish/) but list or read nothing else. Files are created with these modes (:mod:`pycertsrv.fsutil`);
:func:`secure_home` tightens a home made before, when it is opened.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import E_ACCESSDENIED, E_INVALIDARG, AccessDenied, InvalidArgument
from .fsutil import PRIVATE_DIR, PRIVATE_FILE, PUBLIC_DIR, PUBLIC_FILE

ENV_HOME = "CERTSRV_HOME"


class Layout:
    """The home's layout, defined once: the name of each entry under the home's root (:class:`Home` joins them;
    everything else asks :class:`Home`, or these names where it has only a root path)."""

    CONFIG = "certsrv.toml"
    DB = "db"
    LOGS = "logs"
    SYSTEM = "system"
    PRIVATE = "private"
    PUBLISH = "publish"
    STAGING = "staging"
    RESTORE = "restore"  # a planned restore's copies of the sets' generations: RESTORE/LOGS
    REGISTRATION = "restore.json"  # in SYSTEM
    SOCKET = "certsrv.sock"
    AUDIT_LOG = "audit.log"
    LOCK = ".lock"


PUBLISH = Layout.PUBLISH
log = logging.getLogger("pycertsrv.home")


def default_home() -> Path:
    """``$CERTSRV_HOME`` or ``~/.certsrv``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".certsrv")


@dataclass(frozen=True)
class Home:
    """Paths inside one CA home."""

    root: Path

    @classmethod
    def at(cls, path: Path | str | None) -> Home:
        """The home at ``path`` (default: :func:`default_home`), made absolute."""
        return cls(Path(path if path is not None else default_home()).expanduser().resolve())

    @property
    def config(self) -> Path:
        """``certsrv.toml``."""
        return self.root / Layout.CONFIG

    @property
    def db_dir(self) -> Path:
        """Database directory."""
        return self.root / Layout.DB

    @property
    def log_dir(self) -> Path:
        """Log generations directory."""
        return self.root / Layout.LOGS

    @property
    def system_dir(self) -> Path:
        """Checkpoint and registration directory."""
        return self.root / Layout.SYSTEM

    @property
    def private_dir(self) -> Path:
        """Private key directory (0700)."""
        return self.root / Layout.PRIVATE

    @property
    def publish_dir(self) -> Path:
        """Published (dynamic) files."""
        return self.root / Layout.PUBLISH

    @property
    def staging_dir(self) -> Path:
        """Backup staging area."""
        return self.root / Layout.STAGING

    @property
    def restore_log_dir(self) -> Path:
        """Where a planned restore copies the sets' log generations (the registration's backup log path)."""
        return self.restore_dir / Layout.LOGS

    @property
    def checkpoint(self) -> Path:
        """The checkpoint file ``system/edb.chk`` (SQLite engine)."""
        return self.system_dir / "edb.chk"

    @property
    def restore_registration(self) -> Path:
        """The restore registration file."""
        return self.system_dir / Layout.REGISTRATION

    @property
    def last_restore(self) -> Path:
        """The record of the last finished restore."""
        return self.system_dir / "last-restore.json"

    @property
    def restore_dir(self) -> Path:
        """Where ``certsrv restore`` copies a set's files before registering them (removed after recovery)."""
        return self.root / Layout.RESTORE

    @property
    def socket(self) -> Path:
        """Default Unix socket of the service."""
        return self.root / Layout.SOCKET

    @property
    def audit_log(self) -> Path:
        """The service's audit log."""
        return self.root / Layout.AUDIT_LOG

    @property
    def lock(self) -> Path:
        """The lock file."""
        return self.root / Layout.LOCK


def user_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid without a passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def not_owner_error(root: Path, owner: int | None = None) -> AccessDenied:
    """The one-line refusal for a caller who does not own the home ``root``.

    :param root: the home.
    :param owner: its owner's uid, when known (a home inside a private directory cannot be looked at).
    """
    me = user_name(os.geteuid())
    if owner is None:
        return AccessDenied(E_ACCESSDENIED, str(root),
                            f"permission denied for {me}: the home is private to its owner; run the command as "
                            "the user who owns it, or through its service with --server unix:SOCKET")
    who = user_name(owner)
    try:
        run_as = f"sudo -u {pwd.getpwuid(owner).pw_name} certsrv ..."
    except KeyError:
        run_as = f"as uid {owner}"
    return AccessDenied(E_ACCESSDENIED, str(root),
                        f"this CA home belongs to {who}, not to {me}; run the command as its owner ({run_as}), "
                        "or through its service with --server unix:SOCKET")


def check_owner(root: Path) -> None:
    """Refuse (E_ACCESSDENIED, one line) a caller who does not own the existing home ``root``.

    Root is refused too: files it would create (log generations, the lock) would then belong to root and
    the owner's service could not open them. A missing home passes (init/restore make it).
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    except PermissionError:
        raise not_owner_error(root) from None
    if st.st_uid != os.geteuid():
        raise not_owner_error(root, st.st_uid)


def resolve_group(value: str | int) -> int:
    """The gid of ``service.socket_group`` (a group name, or a gid as a number or digits)."""
    if isinstance(value, int) or value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise InvalidArgument(E_INVALIDARG, "service.socket_group",
                              f"no group named {value!r}; create it (groupadd {value}) or fix certsrv.toml") from None


def _allowed(rel: Path, is_dir: bool, root_mode: int) -> int:
    if rel == Path("."):
        return root_mode
    # publish/, also in an old home that init --force moved aside (HOME/.replaced-*/publish, behind its 0700).
    if rel.parts[0] == PUBLISH or (rel.parts[0].startswith(".replaced-") and rel.parts[1:2] == (PUBLISH,)):
        return PUBLIC_DIR if is_dir else PUBLIC_FILE
    return PRIVATE_DIR if is_dir else PRIVATE_FILE


def secure_home(root: Path, *, group_traverse: bool = False) -> list[str]:
    """Take away every permission bit beyond the private home's (see the module text); never widens.

    :param root: the home.
    :param group_traverse: the home root may keep 0710 (``service.socket_group`` lets a group reach the socket).
    :returns: ``"path 0644->0600"`` for each path changed (also logged as one warning).
    """
    root = Path(root)
    root_mode = 0o710 if group_traverse else PRIVATE_DIR
    changed: list[str] = []
    uid = os.geteuid()

    def fix(p: Path, st: os.stat_result) -> None:
        if st.st_uid != uid or stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            return  # symlinks are not followed; the socket is the service's (mode by socket_group)
        old = stat.S_IMODE(st.st_mode)
        new = old & _allowed(p.relative_to(root), stat.S_ISDIR(st.st_mode), root_mode)
        if new != old:
            os.chmod(p, new)  # p is no symlink (lstat above); only the owner could swap it
            changed.append(f"{p.relative_to(root)} {old:04o}->{new:04o}")

    try:
        fix(root, root.lstat())
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                try:
                    fix(p, p.lstat())
                except FileNotFoundError:
                    continue  # removed meanwhile (a temp file)
    except PermissionError:
        raise not_owner_error(root) from None
    if changed:
        log.warning("tightened %d path(s) in %s to the private home's modes (0700/0600, publish/ 0755/0644): %s",
                    len(changed), root, ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else ""))
    return changed
