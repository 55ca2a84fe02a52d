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

import contextlib
import hashlib
import os
import shutil
import socket
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .. import config as config_mod
from ..errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_DIR_NOT_EMPTY,
    ERROR_DIRECTORY,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    ERROR_INVALID_HANDLE,
    ERROR_INVALID_PASSWORD,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    S_OK,
    CertSrvError,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
    SequenceError,
    from_oserror,
    oserror_hresult,
)
from ..fsutil import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    PUBLIC_DIR,
    PUBLIC_FILE,
    HomeLock,
    atomic_write,
    copy_file,
    fsync_dir,
    fsync_file,
    make_dirs,
)
from ..home import Home, check_owner
from ..store import db_file_name, logfile
from ..store import registration as reg_mod
from .manifest import CONFIG_SUBDIR, DB_SUBDIR, KEY_KIND, P12_EXT, Manifest
from .restore_cleanup import discard_partial, empty_home, failure, has_content, registration_or_none, remove_made
from .setcheck import check_chain, check_copy, check_digest, listed_p12, verify_set

# spec §1.3 [HDR]
CSRESTORE_TYPE_FULL = 0x1
CSRESTORE_TYPE_ONLINE = 0x2
CSRESTORE_TYPE_CATCHUP = 0x4
CSRESTORE_TYPE_MASK = 0x5
CSBFT_CERTSERVER_DATABASE = chr(0x44)
CSBFT_LOG_DIR = chr(0x82)
CSBFT_CHECKPOINT_DIR = chr(0x83)

RESTORE_DIR = "restore"
RESTORE_LOGS = "logs"

ProgressCallback = Callable[[str], None]


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
        out.append(CSBFT_CERTSERVER_DATABASE + str(db))
    out.append(CSBFT_LOG_DIR + str(ctx.home.log_dir))
    out.append(CSBFT_CHECKPOINT_DIR + str(ctx.home.system_dir))
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


# ---------------------------------------------------------------- certbcli names (re-exported by pycertsrv.certbcli)


@dataclass(frozen=True)
class CSEDB_RSTMAP:
    """One restore-map entry: the backed-up database name and its name after the restore."""

    pwszDatabaseName: str
    pwszNewDatabaseName: str


def _rstmap(rgrstmap: Any, crstmap: int, function: str) -> list[tuple[str, str]] | None:
    entries = list(rgrstmap or [])
    if crstmap != len(entries):
        raise InvalidArgument(E_INVALIDARG, function, f"crstmap {crstmap} does not match {len(entries)} map entries")
    out: list[tuple[str, str]] = []
    for e in entries:
        if isinstance(e, CSEDB_RSTMAP):
            out.append((e.pwszDatabaseName, e.pwszNewDatabaseName))
        else:
            old, new = e
            out.append((str(old), str(new)))
    return out or None


def CertSrvRestorePrepare(pwszServerName: str | None, dwRestoreFlags: int = CSRESTORE_TYPE_FULL) -> RestoreContext:
    """CertSrvRestorePrepareW: returns the restore context (``phbc``)."""
    return restore_prepare(pwszServerName, dwRestoreFlags)


def CertSrvRestoreGetDatabaseLocations(hbc: RestoreContext) -> list[str]:
    """CertSrvRestoreGetDatabaseLocationsW on a restore context: tagged entries ('D', 0x82, 0x83)."""
    return restore_get_database_locations(hbc)


def CertSrvRestoreRegister(hbc: RestoreContext, pwszCheckPointFilePath: str | None, pwszLogPath: str | None,
                           rgrstmap: Any, crstmap: int, pwszBackupLogPath: str | None, genLow: int,
                           genHigh: int) -> None:
    """CertSrvRestoreRegisterW, C argument order; ``rgrstmap`` = CSEDB_RSTMAP entries or (old, new) pairs."""
    restore_register(hbc, pwszCheckPointFilePath, pwszLogPath, _rstmap(rgrstmap, crstmap, "CertSrvRestoreRegister"),
                     pwszBackupLogPath, genLow, genHigh)


def CertSrvRestoreRegisterThroughFile(hbc: RestoreContext, pwszCheckPointFilePath: str | None,
                                      pwszLogPath: str | None, rgrstmap: Any, crstmap: int,
                                      pwszBackupLogPath: str | None, genLow: int, genHigh: int) -> None:
    """CertSrvRestoreRegisterThroughFile, C argument order."""
    restore_register_through_file(hbc, pwszCheckPointFilePath, pwszLogPath,
                                  _rstmap(rgrstmap, crstmap, "CertSrvRestoreRegisterThroughFile"),
                                  pwszBackupLogPath, genLow, genHigh)


def CertSrvRestoreRegisterComplete(hbc: RestoreContext, hrRestoreState: int = S_OK) -> None:
    """CertSrvRestoreRegisterComplete."""
    restore_register_complete(hbc, hrRestoreState)


def CertSrvRestoreEnd(hbc: RestoreContext) -> None:
    """CertSrvRestoreEnd."""
    restore_end(hbc)


CertSrvRestorePrepareW = CertSrvRestorePrepare
CertSrvRestoreGetDatabaseLocationsW = CertSrvRestoreGetDatabaseLocations
CertSrvRestoreRegisterW = CertSrvRestoreRegister


# ---------------------------------------------------------------- the planned restore (certsrv restore)


@dataclass
class SetInfo:
    """One backup set given to the restore."""

    directory: Path
    manifest: Manifest | None
    p12: Path | None

    @property
    def kind(self) -> str:
        """``full``, ``incremental`` or ``key`` (a key-only set)."""
        return self.manifest.kind if self.manifest else "key"

    def to_json(self) -> dict[str, Any]:
        """The set as plain data."""
        m = self.manifest
        return {"directory": str(self.directory), "kind": self.kind, "ca_name": m.ca_name if m else None,
                "created": m.created if m else None, "gen_low": m.gen_low if m else None,
                "gen_high": m.gen_high if m else None, "snapshot_lsn": m.snapshot_lsn if m else None,
                "files": len(m.files) if m else 0, "bytes": sum(f.size for f in m.files) if m else 0,
                "p12": str(self.p12) if self.p12 else None}


@dataclass
class RestorePlan:
    """What a restore will do: which sets, what goes where, generations, key and configuration."""

    home: Home
    mode: str  # all | database | key
    force: bool
    sets: list[SetInfo]
    ca_name: str
    identity: str | None = None
    gen_low: int = 0
    gen_high: int = 0
    until_us: int | None = None
    database_source: Path | None = None
    database_target: Path | None = None
    backup_db_name: str | None = None
    backup_log_path: Path | None = None
    logs: list[tuple[Path, Path]] = field(default_factory=list)
    p12: Path | None = None
    key_file: Path | None = None
    cert_file: Path | None = None
    key_encrypted: bool = False
    config_source: Path | None = None
    config_action: str = "none"  # restore | keep | default | none
    config_text: str | None = None
    dynamic: list[tuple[Path, Path]] = field(default_factory=list)
    not_empty: list[str] = field(default_factory=list)
    running: str | None = None
    key_subject: str | None = None
    warnings: list[str] = field(default_factory=list)
    # SHA-256 of every file of the authenticated sets, by path: checked again on the bytes actually copied, so a
    # file swapped on the backup storage after the sets were verified is refused too (issue 9 finding 4).
    expected: dict[Path, str] = field(default_factory=dict, repr=False)
    archive: dict[str, Any] | None = None  # issue 13: what --archive added (see pycertsrv.archive.restore)
    archive_range: tuple[int, int] | None = None

    @property
    def full(self) -> SetInfo | None:
        """The full set, if any."""
        return next((s for s in self.sets if s.kind == "full"), None)

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (``--json``, ``--dry-run``)."""
        until = logfile.us_to_datetime(self.until_us).isoformat() if self.until_us is not None else None
        return {
            "home": str(self.home.root), "mode": self.mode, "force": self.force, "ca_name": self.ca_name,
            "identity": self.identity, "sets": [s.to_json() for s in self.sets],
            "gen_low": self.gen_low or None, "gen_high": self.gen_high or None, "until": until,
            "until_us": self.until_us,
            "database": None if self.database_target is None else {
                "source": str(self.database_source), "target": str(self.database_target),
                "restore_map": [self.backup_db_name, str(self.database_target)]},
            "backup_log_path": str(self.backup_log_path) if self.backup_log_path else None,
            "logs": [{"source": str(s), "target": str(t)} for s, t in self.logs],
            "key": None if self.p12 is None else {
                "p12": str(self.p12), "key_file": str(self.key_file), "cert_file": str(self.cert_file),
                "encrypted": self.key_encrypted, "subject": self.key_subject},
            "config": {"action": self.config_action,
                       "source": str(self.config_source) if self.config_source else None,
                       "target": str(self.home.config)},
            "dynamic": [{"source": str(s), "target": str(t)} for s, t in self.dynamic],
            "target_not_empty": self.not_empty, "running": self.running, "warnings": self.warnings,
            "archive": self.archive,
        }

    def describe(self) -> list[str]:
        """The plan as text lines."""
        out = [f"Restore plan for {self.ca_name!r} into {self.home.root} ({self.mode}):"]
        for s in self.sets:
            if s.manifest:
                out.append(f"  {s.kind:<11} {s.directory}  generations {s.manifest.gen_low:08X}.."
                           f"{s.manifest.gen_high:08X}  created {s.manifest.created}")
            else:
                out.append(f"  key         {s.directory}")
        if self.database_target is not None:
            out.append(f"  database    {self.database_source} -> {self.database_target}")
            out.append(f"  logs        {len(self.logs)} generation(s) {self.gen_low:08X}..{self.gen_high:08X} "
                       f"-> {self.backup_log_path}")
        if self.archive is not None:
            a = self.archive
            out.append(f"  archive     {a['directory']}: {a['generations']} generation(s) "
                       f"{a['gen_low'] or ''}..{a['gen_high'] or ''} (to LSN {a['last_lsn']})")
        if self.until_us is not None:
            out.append(f"  until       {logfile.us_to_datetime(self.until_us).isoformat()} (point in time)")
        if self.p12 is not None:
            out.append(f"  key         {self.p12} -> {self.key_file}{' (encrypted)' if self.key_encrypted else ''}")
            out.append(f"  certificate -> {self.cert_file}")
        out.append(f"  config      {self.config_action}" + (f" from {self.config_source}" if self.config_source
                                                              and self.config_action == "restore" else ""))
        if self.dynamic:
            out.append(f"  published   {len(self.dynamic)} file(s) -> {self.home.publish_dir}")
        if self.not_empty:
            out.append("  target not empty: " + "; ".join(self.not_empty) + ("" if self.force else " (use --force)"))
        if self.running:
            out.append(f"  the CA is running ({self.running}): stop it first")
        return out


def parse_until(text: str) -> int:
    """``--until`` (ISO 8601; no zone means UTC) as µs since the epoch."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(E_INVALIDARG, "--until", f"{text!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _find_p12(d: Path) -> Path | None:
    if d.is_file() and d.suffix.lower() == P12_EXT:
        return d
    if not d.is_dir():
        return None
    found = sorted(p for p in d.iterdir() if p.suffix.lower() == P12_EXT and p.is_file())
    return found[0] if found else None


def load_p12(path: Path, password: bytes | None,
             sha256: str | None = None) -> tuple[Any, x509.Certificate, list[x509.Certificate]]:
    """Open the set's PKCS#12: (key, CA certificate, chain); a wrong password is ERROR_INVALID_PASSWORD.

    :param path: the ``<CA name>.p12`` file.
    :param password: its password.
    :param sha256: the SHA-256 the set's authenticated manifest lists for it (checked on the bytes read).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(path), f"cannot read the key file: {e.strerror}") from None
    check_digest(path, hashlib.sha256(data).hexdigest(), sha256)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        # spec §5.1 [OBS-Lab2b]: certutil reports ERROR_INVALID_PASSWORD for a wrong PKCS#12 password.
        what = "a password is needed (--password-file)" if not password else "the password is not correct"
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(path), f"cannot open the PKCS#12: {what}") from None
    if key is None or cert is None:
        raise CorruptData(ERROR_INVALID_DATA, str(path), "the PKCS#12 holds no CA key and certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CorruptData(ERROR_INVALID_DATA, str(path), f"CA key type {type(key).__name__} is not supported")
    from ..ca.keys import same_public_key

    if not same_public_key(cert.public_key(), key.public_key()):
        raise CorruptData(ERROR_INVALID_DATA, str(path), "the certificate in the PKCS#12 does not match its key")
    return key, cert, list(extra or [])


def _load_config_text(path: Path, sha256: str | None = None) -> tuple[config_mod.Config, str]:
    raw = path.read_bytes()
    check_digest(path, hashlib.sha256(raw).hexdigest(), sha256)
    text = raw.decode()
    try:
        cfg = config_mod.Config.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise CorruptData(ERROR_INVALID_DATA, str(path), f"the set's configuration is not valid: {e}") from None
    return cfg, text


def _not_empty(home: Home, mode: str, key_file: Path | None) -> list[str]:
    reasons: list[str] = []
    if mode in ("all", "database"):
        if home.db_dir.is_dir() and any(p.is_file() for p in home.db_dir.iterdir()):
            reasons.append(f"{home.db_dir} holds a database")
        if logfile.list_generations(home.log_dir):
            reasons.append(f"{home.log_dir} holds log generations")
        if home.restore_registration.exists():
            reasons.append(f"a restore is registered ({home.restore_registration})")
    if mode in ("all", "key") and key_file is not None and key_file.exists():
        reasons.append(f"{key_file} exists (a CA key)")
    return reasons


def plan_restore(
    directories: list[Path | str],
    *,
    home: Path | str | Home | None = None,
    database_only: bool = False,
    key_only: bool = False,
    force: bool = False,
    until: str | int | datetime | None = None,
    restore_config: bool = False,
    password: bytes | None = None,
    allow_unauthenticated: bool = False,
    archive: Path | str | None = None,
) -> RestorePlan:
    """Check the sets and work out what a restore into ``home`` does (nothing is written).

    :param directories: the full set and its incrementals, any order (key-only: a set dir or the .p12).
    :param home: the target home (default ``$CERTSRV_HOME`` / ``~/.certsrv``).
    :param database_only: restore the database only (no key).
    :param key_only: restore the key and certificate only.
    :param force: allow a non-empty target.
    :param until: point in time (ISO 8601 text, µs since epoch, or aware datetime).
    :param restore_config: replace an existing home's configuration with the set's.
    :param password: the sets' password: authenticates every set (required) and opens the PKCS#12.
    :param allow_unauthenticated: accept sets without an authenticator (from before they existed), with a warning
        in ``plan.warnings``.
    :param archive: a continuous archive (issue 13): its generations after the sets are replayed too.
    """
    if database_only and key_only:
        raise InvalidArgument(E_INVALIDARG, "restore", "--database-only and --key-only exclude each other")
    if not directories:
        raise InvalidArgument(E_INVALIDARG, "restore", "give at least one backup set directory")
    mode = "key" if key_only else ("database" if database_only else "all")
    h = home if isinstance(home, Home) else Home.at(home)
    sets: list[SetInfo] = []
    warnings: list[str] = []
    for d in directories:
        p = Path(d).absolute()
        if not p.exists():
            raise NotFound(ERROR_FILE_NOT_FOUND, str(p), "no such backup set")
        if mode == "key":
            given_p12 = p if p.is_file() else None
            sd = p.parent if given_p12 is not None else p
            if not (sd / DB_SUBDIR).is_dir() and allow_unauthenticated:
                p12 = _find_p12(p)  # a key-only set from before authenticated sets: the bare PKCS#12
                if p12 is None:
                    raise NotFound(ERROR_FILE_NOT_FOUND, str(p), f"no {P12_EXT} key file in this set")
                warnings.append(f"{p12}: this key file has NO set authenticator; restored only because of "
                                "--allow-unauthenticated")
                sets.append(SetInfo(sd, None, p12))
                break
            m = verify_set(sd, password, allow_unauthenticated, warnings)
            p12 = listed_p12(sd, m) if m.auth is not None else _find_p12(p)
            if p12 is None or (given_p12 is not None and given_p12.resolve() != p12.resolve()):
                raise NotFound(ERROR_FILE_NOT_FOUND, str(p), f"no {P12_EXT} key file listed in this set's manifest")
            sets.append(SetInfo(sd, m, p12))
            break  # the key comes from one set
        if not (p / DB_SUBDIR).is_dir():
            # spec §5.3 [PS-JT]: 0x80070002 when the path holds no database backup (e.g. a key-only set).
            raise NotFound(ERROR_FILE_NOT_FOUND, str(p / DB_SUBDIR),
                           "no database backup in this directory (a key-only set? use --key-only)")
        m = verify_set(p, password, allow_unauthenticated, warnings)
        if m.kind == KEY_KIND:
            raise NotFound(ERROR_FILE_NOT_FOUND, str(p / DB_SUBDIR),
                           "no database backup in this directory (a key-only set: use --key-only)")
        sets.append(SetInfo(p, m, listed_p12(p, m) if m.auth is not None else _find_p12(p)))
    plan = RestorePlan(home=h, mode=mode, force=force, sets=[], ca_name="")
    plan.warnings = warnings
    for si in sets:
        if si.manifest is not None and si.manifest.auth is not None:
            plan.expected.update({si.directory / f.path: f.sha256 for f in si.manifest.files})
    if mode == "key":
        s = sets[0]
        plan.sets = sets
        plan.p12 = s.p12
        plan.ca_name = s.manifest.ca_name if s.manifest else (s.p12.stem if s.p12 else "")
    else:
        _order_sets(plan, sets)
    _plan_config(plan, restore_config)
    cfg = plan_config(plan)
    if mode in ("all", "key"):
        plan.key_file = h.root / cfg.ca.key_file
        plan.cert_file = h.root / cfg.ca.cert_file
        plan.key_encrypted = bool(cfg.ca.key_passphrase_file or cfg.ca.key_passphrase_env)
        if plan.p12 is None:
            if mode == "all" and plan.key_file.exists():
                plan.key_file = plan.cert_file = None  # the set has no key; the home's stays
            else:
                raise NotFound(ERROR_FILE_NOT_FOUND, str(plan.sets[0].directory),
                               f"the full set has no {P12_EXT} key file; use --database-only")
        if plan.p12 is not None and password is not None:
            _, cert, _ = load_p12(plan.p12, password, plan.expected.get(plan.p12))
            plan.key_subject = cert.subject.rfc4514_string()
    if archive is not None:
        if mode == "key":
            raise InvalidArgument(E_INVALIDARG, "--archive", "the archive applies to a database restore")
        from ..archive.restore import add_archive

        add_archive(plan, archive)
    if until is not None:
        if mode == "key":
            raise InvalidArgument(E_INVALIDARG, "--until", "a point in time applies to a database restore")
        plan.until_us = _until_us(until)
        _check_until(plan)
    plan.not_empty = _not_empty(h, mode, plan.key_file)
    lock = HomeLock(h.root)
    if h.root.is_dir() and lock.is_held():
        plan.running = lock.holder() or "unknown pid"
    return plan


def _until_us(until: str | int | datetime) -> int:
    if isinstance(until, datetime):
        if until.tzinfo is None:
            raise InvalidArgument(E_INVALIDARG, "--until", "the time must be timezone-aware")
        return int(until.timestamp() * 1_000_000)
    if isinstance(until, int):
        return until
    return parse_until(until)


def _order_sets(plan: RestorePlan, sets: list[SetInfo]) -> None:
    """Full first, then incrementals by gen_low; one CA; no generation missing between sets."""
    fulls = [s for s in sets if s.kind == "full"]
    incs = sorted((s for s in sets if s.kind == "incremental"), key=lambda s: (s.manifest.gen_low if s.manifest else 0))
    if not fulls:
        raise SequenceError(ERROR_DIRECTORY, str(sets[0].directory),
                            "Restore of an incremental image cannot be performed before a restore from a full image: "
                            "give the full set too")
    if len(fulls) > 1:
        raise InvalidArgument(E_INVALIDARG, str(fulls[1].directory),
                              f"more than one full set given ({fulls[0].directory} and {fulls[1].directory})")
    full = fulls[0]
    assert full.manifest is not None
    m0 = full.manifest
    plan.sets = [full, *incs]
    plan.ca_name, plan.identity = m0.ca_name, m0.identity
    plan.p12 = full.p12
    high = m0.gen_high
    prev = full
    for s in incs:
        m = s.manifest
        assert m is not None
        if m.identity != m0.identity:
            raise InvalidArgument(E_INVALIDARG, str(s.directory),
                                  f"set belongs to database {m.identity}, the full set to {m0.identity}")
        if m.gen_low > high + 1:
            missing = (f"{logfile.log_name(high + 1)}" if m.gen_low == high + 2
                       else f"{logfile.log_name(high + 1)}..{logfile.log_name(m.gen_low - 1)}")
            raise CorruptData(JET_ERR_MISSING_RESTORE_LOG_FILES, str(s.directory),
                              f"the sets do not chain: generation(s) {missing} between {prev.directory} and "
                              f"{s.directory} are missing (an incremental set is missing)")
        check_chain(prev, s)
        high = max(high, m.gen_high)
        prev = s
    plan.gen_low, plan.gen_high = m0.gen_low, high
    h = plan.home
    assert m0.database is not None
    plan.database_source = full.directory / m0.database
    plan.database_target = h.db_dir / Path(m0.database).name
    plan.backup_db_name = next((loc[1:] for loc in m0.locations if loc[:1] == CSBFT_CERTSERVER_DATABASE),
                               str(plan.database_target))
    plan.backup_log_path = h.root / RESTORE_DIR / RESTORE_LOGS
    by_gen: dict[int, tuple[Path, str]] = {}
    for s in plan.sets:
        assert s.manifest is not None
        for f in s.manifest.files:
            if f.role == "log":
                g = logfile.parse_log_name(Path(f.path).name)
                assert g is not None
                src = s.directory / f.path
                if g in by_gen:
                    if by_gen[g][1] != f.sha256:
                        raise CorruptData(ERROR_INVALID_DATA, str(src),
                                          f"generation {g:08X} differs from the copy in {by_gen[g][0]}")
                    continue
                by_gen[g] = (src, f.sha256)
    plan.logs = [(src, plan.backup_log_path / logfile.log_name(g)) for g, (src, _) in sorted(by_gen.items())]
    # Published files: the newest set's copy wins (CRLs published between the sets).
    dyn: dict[str, Path] = {}
    for s in plan.sets:
        assert s.manifest is not None
        for f in s.manifest.files:
            if f.role == "dynamic":
                dyn[Path(f.path).name] = s.directory / f.path
    plan.dynamic = [(src, h.publish_dir / name) for name, src in sorted(dyn.items())]


def _plan_config(plan: RestorePlan, restore_config: bool) -> None:
    src: Path | None = None
    for s in reversed(plan.sets):
        c = s.directory / CONFIG_SUBDIR / config_mod.CONFIG_FILE
        if c.is_file():
            src = c
            break
    exists = plan.home.config.is_file()
    if exists and not restore_config:
        plan.config_action = "keep"
    elif src is not None:
        plan.config_action, plan.config_source = "restore", src
        _, plan.config_text = _load_config_text(src, plan.expected.get(src))
    elif exists:
        plan.config_action = "keep"
    else:
        plan.config_action = "default"
        plan.config_text = config_mod.dumps(config_mod.Config(ca=config_mod.CASection(name=plan.ca_name)))


def plan_config(plan: RestorePlan) -> config_mod.Config:
    """The configuration the restored home will have."""
    if plan.config_text is not None:
        return config_mod.Config.model_validate(tomllib.loads(plan.config_text))
    return config_mod.load(plan.home.root)


def _check_until(plan: RestorePlan) -> None:
    """A point in time before the full set's snapshot cannot be reached (the snapshot already holds later rows)."""
    full = plan.full
    assert full is not None and full.manifest is not None and plan.until_us is not None
    snap = full.manifest.snapshot_lsn
    if not snap:
        return
    ident = bytes.fromhex(full.manifest.identity)
    for src, _ in plan.logs:
        h = logfile.read_header(src, ident)
        if h.first_lsn > snap:
            break
        _, recs = logfile.scan(src, ident, keep=True)
        for r in recs:
            if r.lsn == snap:
                if plan.until_us < r.ts_us:
                    raise InvalidArgument(
                        E_INVALIDARG, "--until",
                        f"{logfile.us_to_datetime(plan.until_us).isoformat()} is before the full set's snapshot "
                        f"(LSN {snap} at {logfile.us_to_datetime(r.ts_us).isoformat()}); use an older full set")
                return


@dataclass
class RestoreResult:
    """What :func:`run_restore` did."""

    plan: RestorePlan
    registration: dict[str, Any] | None = None
    files: int = 0
    bytes: int = 0
    key_written: bool = False
    config_written: bool = False
    superseded: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain data."""
        return {"plan": self.plan.to_json(), "registration": self.registration, "files": self.files,
                "bytes": self.bytes, "key_written": self.key_written, "config_written": self.config_written,
                "superseded": self.superseded,
                "next": "start the CA (certsrv serve) to run the recovery" if self.registration else None}


def _copy_durable(src: Path, dest: Path, mode: int = PRIVATE_FILE, dir_mode: int = PRIVATE_DIR,
                  sha256: str | None = None) -> int:
    """Copy via a temp name, fsync, rename: the destination is either absent, old, or whole; with ``sha256``, the
    copy is hashed before the rename and refused when it is not what the authenticated manifest lists."""
    make_dirs(dest.parent, dir_mode)
    tmp = dest.with_name(f".{dest.name}.restoring")
    copy_file(src, tmp, mode)
    check_copy(src, tmp, sha256)
    fsync_file(tmp)
    os.replace(tmp, dest)
    return dest.stat().st_size


def _key_passphrase(plan: RestorePlan, cfg: config_mod.Config, given: bytes | None) -> bytes | None:
    """The passphrase the restored key is encrypted with: the given one, else the configured source."""
    if given:
        return given
    if not (cfg.ca.key_passphrase_file or cfg.ca.key_passphrase_env):
        return None
    from ..ca.keys import resolve_passphrase

    pfile = cfg.ca.key_passphrase_file
    if pfile is not None and not Path(pfile).is_absolute():
        pfile = str(plan.home.root / pfile)
    try:
        return resolve_passphrase(pfile, cfg.ca.key_passphrase_env)
    except CertSrvError:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(plan.home.config),
                              "the configuration expects an encrypted CA key but its passphrase source is not "
                              "available here: give --key-passphrase-file") from None


def run_restore(
    plan: RestorePlan,
    *,
    password: bytes | None = None,
    key_passphrase: bytes | None = None,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Carry out a plan: check the key password, place the files, register and complete (spec §3.3).

    :param plan: from :func:`plan_restore`.
    :param password: the PKCS#12 password (needed unless ``--database-only``).
    :param key_passphrase: encrypt the restored CA key with this passphrase.
    :param progress: called with one line per step.
    """
    say = progress or (lambda _s: None)
    res = RestoreResult(plan)
    cfg = plan_config(plan)
    key_material: tuple[Any, x509.Certificate, list[x509.Certificate]] | None = None
    passphrase: bytes | None = None
    if plan.p12 is not None and plan.key_file is not None:
        # spec §5.1: checked before anything is placed — a wrong password writes nothing.
        key_material = load_p12(plan.p12, password, plan.expected.get(plan.p12))
        passphrase = _key_passphrase(plan, cfg, key_passphrase)
    root = plan.home.root
    # A home that is missing or empty is all ours: a failed restore removes everything it made there.
    fresh = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    made = [p for p in (root, *root.parents) if not p.exists()]
    try:
        ctx = restore_prepare(home=plan.home, force=plan.force)
    except OSError as e:
        if fresh:
            with contextlib.suppress(OSError):
                (root / ".lock").unlink()  # the lock file this restore just created (writing its pid failed)
        remove_made(made)
        raise from_oserror(e, e.filename if e.filename is not None else root, "cannot create the CA home") from None
    try:
        not_empty = _not_empty(plan.home, plan.mode, plan.key_file)
        if not_empty and not plan.force:
            # spec §3.3 step 6, §5.3: certutil -f / PowerShell -Force; 0x80070091 otherwise.
            raise Conflict(ERROR_DIR_NOT_EMPTY, str(plan.home.root),
                           "the target is not empty (" + "; ".join(not_empty) + "); use --force")
        if plan.mode == "key":
            assert key_material is not None
            _write_key(plan, cfg, key_material, passphrase, res, say)
            return res
        _place_database(ctx, plan, cfg, key_material, passphrase, res, say)
        reg = reg_mod.read_registration(plan.home.root)
        res.registration = reg.to_json() if reg else None
        return res
    except BaseException as e:
        err = failure(e, root)
        if fresh:
            empty_home(root)  # under the lock: nothing of the failed restore stays
            left = f"nothing was left in {root}"
        else:
            reg = registration_or_none(root)
            left = (f"{root} keeps {reg_mod.unfinished_from(reg)}: {reg_mod.rerun_hint(reg, root)}"
                    if reg is not None and reg.state in (reg_mod.STATE_REGISTERED, reg_mod.STATE_FAILED) else "")
        if err is None:
            raise
        raise type(err)(err.hresult, err.function, f"{err.message}; {left}" if left else err.message) from None
    finally:
        restore_end(ctx)
        if fresh and not has_content(root):
            with contextlib.suppress(OSError):
                (root / ".lock").unlink()
            remove_made(made)


def _place_database(ctx: RestoreContext, plan: RestorePlan, cfg: config_mod.Config,
                    key_material: tuple[Any, x509.Certificate, list[x509.Certificate]] | None,
                    passphrase: bytes | None, res: RestoreResult, say: ProgressCallback) -> None:
    h = plan.home
    full = plan.full
    assert full is not None and full.manifest is not None
    assert plan.database_target is not None and plan.database_source is not None
    assert plan.backup_log_path is not None and plan.backup_db_name is not None
    # Registered before anything is placed: from here on the CA refuses to start until completed.
    restore_register(ctx, str(h.system_dir), str(h.log_dir), [(plan.backup_db_name, str(plan.database_target))],
                     str(plan.backup_log_path), full.manifest.gen_low, full.manifest.gen_high,
                     until_us=plan.until_us, identity=plan.identity)
    try:
        # The sets are recorded so that an unfinished restore can be named and rerun (issue 10).
        reg = reg_mod.read_registration(h.root)
        if reg is not None:
            reg.sources = [str(s.directory) for s in plan.sets]
            reg_mod.write_registration(h.root, reg)
        for d in (h.db_dir, h.log_dir, h.system_dir):
            make_dirs(d)
        # Small files first (configuration, published files, key): a CA whose restore did not finish then
        # fails at its store with the restore's own error rather than at a missing configuration.
        if plan.config_action in ("restore", "default") and plan.config_text is not None:
            atomic_write(h.config, plan.config_text.encode())
            res.config_written = True
        for src, dest in plan.dynamic:
            res.bytes += _copy_durable(src, dest, PUBLIC_FILE, PUBLIC_DIR, sha256=plan.expected.get(src))
            res.files += 1
        if plan.dynamic:
            fsync_dir(h.publish_dir)
        if key_material is not None:
            _write_key(plan, cfg, key_material, passphrase, res, say)
        _place_db_file(plan, res)
        say(f"Restoring Database files: {plan.database_target}")
        # The backup log path holds copies of the sets' generations only: an earlier restore's are stale.
        shutil.rmtree(plan.backup_log_path, ignore_errors=True)
        make_dirs(plan.backup_log_path)
        for src, dest in plan.logs:
            res.bytes += _copy_durable(src, dest, sha256=plan.expected.get(src))
            res.files += 1
        fsync_dir(plan.backup_log_path)
        say(f"Restoring Log files: {len(plan.logs)} generation(s) {plan.gen_low:08X}..{plan.gen_high:08X}")
        for s in plan.sets[1:]:
            assert s.manifest is not None
            restore_register(ctx, None, None, None, str(plan.backup_log_path), s.manifest.gen_low,
                             s.manifest.gen_high, identity=plan.identity)
        if plan.archive_range is not None:  # issue 13: the archived generations, registered like an incremental
            restore_register(ctx, None, None, None, str(plan.backup_log_path), *plan.archive_range,
                             identity=plan.identity)
    except BaseException as e:
        # Half-copied files go first (on a full disk they hold the space the registration needs), then the
        # registration records the failure (spec §2.16: RegisterComplete with the failure hr), so that the
        # CA refuses to start naming it; if even that cannot be written, the registration stays uncompleted,
        # which the CA refuses as well.
        discard_partial(h.db_dir, h.publish_dir, h.private_dir, plan.backup_log_path or h.db_dir)
        err = failure(e, h.root)
        with contextlib.suppress(OSError, CertSrvError):
            reg_mod.complete(h.root, context=ctx.id, hr=hresult_of(e),
                             message=str(err) if err is not None else f"{type(e).__name__}: {e}",
                             function="CertSrvRestoreRegisterComplete")
        raise
    restore_register_complete(ctx, S_OK)
    say(f"Full database restore for {plan.ca_name} registered; start the CA to complete the restore.")


def _place_db_file(plan: RestorePlan, res: RestoreResult) -> None:
    """Put the set's database at its target; the home's earlier database files are moved aside, never deleted."""
    h = plan.home
    assert plan.database_target is not None and plan.database_source is not None
    tmp = h.db_dir / f".{plan.database_target.name}.restoring"
    copy_file(plan.database_source, tmp)
    check_copy(plan.database_source, tmp, plan.expected.get(plan.database_source))
    fsync_file(tmp)
    res.bytes += tmp.stat().st_size
    res.files += 1
    aside = h.db_dir / f"superseded-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    for p in sorted(h.db_dir.iterdir()):
        # A stale -wal beside the new file would be applied to it by SQLite: it goes aside with its database.
        if p.is_file() and (p.suffix == ".db" or ".db-" in p.name or ".recovering" in p.name):
            make_dirs(aside)
            os.replace(p, aside / p.name)
            res.superseded.append(str(aside / p.name))
    os.replace(tmp, plan.database_target)
    fsync_dir(h.db_dir)


def hresult_of(e: BaseException) -> int:
    """An HRESULT for any failure (OSError errno wrapped as a Win32 error, else E_FAIL)."""
    if isinstance(e, CertSrvError):
        return e.hresult
    if isinstance(e, OSError):
        return oserror_hresult(e)  # errno mapped to its Win32 error (ENOSPC: ERROR_DISK_FULL), spec §1.5
    return 0x80004005


def _write_key(plan: RestorePlan, cfg: config_mod.Config,
               key_material: tuple[Any, x509.Certificate, list[x509.Certificate]], passphrase: bytes | None,
               res: RestoreResult, say: ProgressCallback) -> None:
    from ..ca.crl import write_ca_certificate
    from ..ca.keys import save_private_key

    key, cert, chain = key_material
    assert plan.key_file is not None and plan.cert_file is not None
    plan.home.private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_private_key(plan.key_file, key, passphrase)  # PKCS#8 PEM, 0600, atomic
    write_ca_certificate(plan.cert_file, cert, chain)
    res.key_written = True
    say(f"Restored keys and certificates for {plan.ca_name} from {plan.p12}.")


def restore_status(home: Path | str | Home | None = None) -> dict[str, Any]:
    """The registration of a home (or the last finished restore) as plain data."""
    h = home if isinstance(home, Home) else Home.at(home)
    reg = reg_mod.read_registration(h.root)
    return {"home": str(h.root), "registration": reg.to_json() if reg else None,
            "last_restore": reg_mod.last_restore(h.root)}


__all__ = [
    "CSBFT_CERTSERVER_DATABASE",
    "CSBFT_CHECKPOINT_DIR",
    "CSBFT_LOG_DIR",
    "CSEDB_RSTMAP",
    "CSRESTORE_TYPE_CATCHUP",
    "CSRESTORE_TYPE_FULL",
    "CSRESTORE_TYPE_MASK",
    "CSRESTORE_TYPE_ONLINE",
    "CertSrvRestoreEnd",
    "CertSrvRestoreGetDatabaseLocations",
    "CertSrvRestoreGetDatabaseLocationsW",
    "CertSrvRestorePrepare",
    "CertSrvRestorePrepareW",
    "CertSrvRestoreRegister",
    "CertSrvRestoreRegisterComplete",
    "CertSrvRestoreRegisterThroughFile",
    "CertSrvRestoreRegisterW",
    "RestoreContext",
    "RestorePlan",
    "RestoreResult",
    "SetInfo",
    "load_p12",
    "parse_until",
    "plan_restore",
    "resolve_restore_home",
    "restore_end",
    "restore_get_database_locations",
    "restore_prepare",
    "restore_register",
    "restore_register_complete",
    "restore_register_through_file",
    "restore_status",
    "run_restore",
]
