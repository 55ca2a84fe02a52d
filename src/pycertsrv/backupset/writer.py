"""Writing a backup set (spec §3.1, §3.2, §5.4): the client side of ``certsrv backup``.

Flow of a full backup (spec §3.1): Prepare, RestoreGetDatabaseLocations (kept in the manifest),
GetDatabaseNames + Open/Read/Close, GetBackupLogs + Open/Read/Close, GetDynamicFileList +
Open/Read/Close (spec §6 item 7: our server streams them), then the set is made durable and
complete on disk, and only then TruncateLogs (spec §2.9: truncate only once every file is
secured), then End. An incremental backup skips the database and never truncates unless asked.

A failed backup never leaves a set that looks complete: everything is written under
``DIR/.partial-<pid>/``, fsynced, moved into place, and the manifest ``DataBase/certbkxp.dat``
is written last; on failure whatever was written is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from ..config import Config
from ..config import load as load_config
from ..errors import (
    E_INVALIDARG,
    ERROR_DIR_NOT_EMPTY,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    ERROR_INVALID_PASSWORD,
    JET_ERR_BAD_LOG_SIGNATURE,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
    from_oserror,
)
from ..fsutil import fsync_dir
from ..home import Home
from ..spec import FULL, INCREMENTAL
from ..store import logfile, setdb
from .chain import find_base, pick_base
from .lineage import parse as parse_lineage
from .manifest import (
    CONFIG_SUBDIR,
    DB_SUBDIR,
    DYNAMIC_SUBDIR,
    KEY_KIND,
    MANIFEST_NAME,
    P12_EXT,
    FileEntry,
    Manifest,
    write_manifest,
)
from .setauth import SealingKey
from .stream import CHUNK, Pacer, Progress, ProgressCallback, SessionLike, stream_file
from .target import home_roots, refuse_inside_home

PARTIAL_PREFIX = ".partial-"


@dataclass
class BackupResult:
    """What a backup wrote: the set directory, manifest, p12, bytes streamed, truncation, timing."""

    directory: Path
    kind: str
    manifest: Manifest | None
    p12: Path | None
    bytes_streamed: int = 0
    truncated: list[int] | None = None
    recorded: dict[str, Any] | None = None
    seconds: float = 0.0
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain data (``--json``)."""
        return {"directory": str(self.directory), "kind": self.kind, "p12": str(self.p12) if self.p12 else None,
                "bytes_streamed": self.bytes_streamed, "truncated": self.truncated, "recorded": self.recorded,
                "seconds": round(self.seconds, 3),
                "manifest": self.manifest.to_json() if self.manifest else None}


def _dir_empty(d: Path) -> bool:
    return not any(d.iterdir())


def _unique_name(base: str, used: set[str]) -> str:
    name = base
    i = 1
    while name in used:
        stem, dot, ext = base.rpartition(".")
        name = f"{stem}-{i}.{ext}" if dot else f"{base}-{i}"
        i += 1
    used.add(name)
    return name


def _check_streamed(identity: str, db_file: Path | None, logs: list[Path],
                    snapshot_lsn_out: list[int]) -> None:
    """The streamed files belong to the CA the session named (db _meta and every log header)."""
    ident = bytes.fromhex(identity)
    for p in logs:
        try:
            logfile.read_header(p, ident)
        except CorruptData as e:
            raise CorruptData(JET_ERR_BAD_LOG_SIGNATURE, p.name, f"streamed log is not usable: {e.message}") from None
    if db_file is not None:
        try:
            meta = setdb.read_meta(db_file)
        except setdb.UnreadableDatabase as e:
            raise CorruptData(ERROR_INVALID_DATA, db_file.name, f"streamed database is not readable: {e}") from None
        if meta.get("identity") != identity:
            raise CorruptData(JET_ERR_BAD_LOG_SIGNATURE, db_file.name,
                              f"database identity {meta.get('identity')} is not the server's {identity}")
        snapshot_lsn_out.append(int(meta.get("applied_lsn", "0")))


def _key_material(home: Home, cfg: Config, ca_name: str, key_passphrase: bytes | None) -> tuple[Any, list[Any]]:
    """The CA key and certificates of the local home (the backup runs on the CA machine)."""
    from ..ca.keys import configured_passphrase, load_private_key, same_public_key

    if cfg.ca.name != ca_name:
        raise InvalidArgument(E_INVALIDARG, str(home.root),
                              f"this home is CA {cfg.ca.name!r} but the server is {ca_name!r}; use --home")
    if key_passphrase is None and (cfg.ca.key_passphrase_file or cfg.ca.key_passphrase_env):
        key_passphrase = configured_passphrase(home.root, cfg.ca.key_passphrase_file, cfg.ca.key_passphrase_env)
    key = load_private_key(home.root / cfg.ca.key_file, key_passphrase)
    cert_path = home.root / cfg.ca.cert_file
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except FileNotFoundError:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(cert_path), "CA certificate is missing") from None
    except ValueError as e:
        raise CorruptData(ERROR_INVALID_DATA, str(cert_path), f"CA certificate is not PEM: {e}") from None
    if not certs or not same_public_key(certs[0].public_key(), key.public_key()):
        raise CorruptData(ERROR_INVALID_DATA, str(cert_path), "CA certificate does not match the CA key")
    return key, certs


def write_p12(path: Path, name: str, key: Any, certs: list[Any], password: bytes) -> None:
    """The CA key and certificate chain as a password-protected PKCS#12 (spec §5.1), mode 0600, fsynced.

    :param path: file to create.
    :param name: friendly name (the CA name).
    :param key: the CA private key.
    :param certs: the CA certificate first, then its chain.
    :param password: protects the key and the file.
    """
    data = pkcs12.serialize_key_and_certificates(name.encode(), key, certs[0], certs[1:] or None,
                                                 BestAvailableEncryption(password))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_session(source: Any, kind: str) -> SessionLike:
    if hasattr(source, "backup"):
        s: SessionLike = source.backup(kind)
    else:
        s = source(kind)
    return s


def _sha(path: Path) -> str:
    from ..fsutil import sha256_file

    return sha256_file(path)


def run_backup(
    source: Any,
    directory: Path | str,
    *,
    kind: str = FULL,
    keep_log: bool = False,
    database_only: bool = False,
    key_only: bool = False,
    password: bytes | str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    home: Home | Path | str | None = None,
    key_passphrase: bytes | None = None,
    chunk: int = CHUNK,
    max_rate: float | None = None,
    base: Path | str | None = None,
) -> BackupResult:
    """Write a backup set into ``directory`` (layout of spec §5.4 plus Dynamic/ and Config/).

    :param source: a ``Client`` (``source.backup(kind)``) or a callable ``kind -> session``.
    :param directory: the set directory; must be empty or missing unless ``force``.
    :param kind: ``"full"`` or ``"incremental"`` (logs only).
    :param keep_log: do not truncate logs (full backups truncate by default; incrementals never do).
    :param database_only: no PKCS#12 key file.
    :param key_only: only the PKCS#12 key file (no session with the service).
    :param password: the set's password (always required): protects the PKCS#12 and keys the authenticator
        of the manifest (:mod:`.setauth`).
    :param force: write into a non-empty directory, replacing an earlier set's pieces.
    :param progress: called with :class:`Progress` reports.
    :param home: the local CA home (key, certificate, configuration).
    :param key_passphrase: passphrase of an encrypted CA key (default: the home's configured source).
    :param chunk: receive buffer size (and bytes asked per Read of a session that cannot receive into buffers).
    :param max_rate: at most this many bytes per second on average (None: no limit).
    :param base: for an incremental: the set it continues (default: found beside ``directory``, see
        :func:`find_base`).
    """
    t0 = time.monotonic()
    if kind not in (FULL, INCREMENTAL):
        raise InvalidArgument(E_INVALIDARG, "backup", f"unknown backup kind {kind!r}")
    if database_only and key_only:
        raise InvalidArgument(E_INVALIDARG, "backup", "--database-only and --key-only exclude each other")
    if max_rate is not None and not max_rate > 0:
        raise InvalidArgument(E_INVALIDARG, "--max-rate", f"{max_rate} is not a positive number of bytes per second")
    if key_only and kind == INCREMENTAL:
        raise InvalidArgument(E_INVALIDARG, "backup", "a key-only backup cannot be incremental")
    pw = password.encode() if isinstance(password, str) else password
    if not pw:
        # Issue 9 finding 4: every set is authenticated with a key derived from its password.
        raise InvalidArgument(ERROR_INVALID_PASSWORD, "backup",
                              "every backup set needs a password (it protects the CA key and authenticates the "
                              "set): give --password-file")
    hm: Home | None = home if isinstance(home, Home) else (Home.at(home) if home is not None else None)
    cfg: Config | None = load_config(hm.root) if hm is not None else None
    if not database_only and (hm is None or cfg is None):
        raise InvalidArgument(E_INVALIDARG, "backup", "the CA key comes from the local home: give --home")
    target = Path(directory).absolute()
    if hm is not None:
        refuse_inside_home(target, [hm.root])
    if target.exists() and not target.is_dir():
        raise Conflict(ERROR_DIR_NOT_EMPTY, str(target), "exists and is not a directory")
    if target.is_dir() and not _dir_empty(target) and not force:
        # spec §5.2/5.3: certutil -f / PowerShell -Force; 0x80070091 otherwise.
        raise Conflict(ERROR_DIR_NOT_EMPTY, str(target), "the directory is not empty; use --force to overwrite")
    # Derived now, before the session opens: scrypt's cost does not lengthen the session (and the CA's pinned
    # snapshot); the salt is fresh for this set.
    sealing = SealingKey.new(pw)
    made: list[Path] = []  # directories this run created (removed again if it fails)
    placed: list[Path] = []
    partial: Path | None = None
    result = BackupResult(target, "key" if key_only else kind, None, None)
    try:
        if key_only:
            assert hm is not None and cfg is not None
            partial = _prepare_target(target, force, made)
            _backup_key_only(hm, cfg, partial, target, result, placed, pw, sealing, key_passphrase)
        else:
            # The session is opened before anything is created: a service that is not running (or refuses)
            # leaves no empty set directory behind (issue 10 finding 7).
            with _open_session(source, kind) as session:
                # spec §3.1 step 5: the locations are saved with the backup (certbkxp.dat); they also tell where
                # the server's home is, which the set must not be written into (issue 9 finding 5).
                locations = session.database_locations()
                refuse_inside_home(target, home_roots(locations))
                partial = _prepare_target(target, force, made)
                _backup_database(session, partial, target, result, placed, locations, kind=kind, keep_log=keep_log,
                                 database_only=database_only, pw=pw, sealing=sealing, hm=hm, cfg=cfg,
                                 key_passphrase=key_passphrase, progress=progress, chunk=chunk,
                                 max_rate=max_rate, base_dir=Path(base).absolute() if base is not None else None)
                result.recorded = session.end()
    except BaseException as e:
        for p in reversed(placed):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()  # only while empty: never what someone else put there
        if isinstance(e, OSError):
            # A full, read-only or foreign target is the operator's to fix: one line naming it (issue 10).
            raise from_oserror(e, None if e.filename is not None else target, "cannot write the backup set") from None
        raise
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    result.seconds = time.monotonic() - t0
    return result


def _prepare_target(target: Path, force: bool, made: list[Path]) -> Path:
    """Create the set directory (missing parents noted in ``made``) and the partial directory inside it;
    returns the partial directory."""
    missing = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    made.extend(reversed(missing))
    if force:
        # The old set stops looking complete before anything of it is replaced.
        with contextlib.suppress(FileNotFoundError):
            (target / DB_SUBDIR / MANIFEST_NAME).unlink()
    partial = target / f"{PARTIAL_PREFIX}{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    return partial


def _backup_key_only(hm: Home, cfg: Config, partial: Path, target: Path, result: BackupResult,
                     placed: list[Path], pw: bytes, sealing: SealingKey, key_passphrase: bytes | None) -> None:
    """A key-only set: the PKCS#12 and a manifest (kind ``key``) whose authenticator covers it."""
    key, certs = _key_material(hm, cfg, cfg.ca.name, key_passphrase)
    p12 = partial / (cfg.ca.name + P12_EXT)
    write_p12(p12, cfg.ca.name, key, certs, pw)
    entry = FileEntry(p12.name, p12.stat().st_size, _sha(p12), "key")
    fsync_dir(partial)
    result.p12 = _place(p12, target / p12.name, placed)
    fsync_dir(target)
    manifest = Manifest(kind=KEY_KIND, ca_name=cfg.ca.name, identity="", created=datetime.now(UTC).isoformat(),
                        gen_low=0, gen_high=0, files=[entry], set_id=secrets.token_hex(16))
    for sub in (DB_SUBDIR, DYNAMIC_SUBDIR, CONFIG_SUBDIR):
        if (target / sub).is_dir():
            shutil.rmtree(target / sub)  # --force over an older set: nothing of it is part of this one
    write_manifest(target, manifest, sealing)
    result.manifest = manifest
    result.files = [entry]
    placed.clear()


def _place(src: Path, dest: Path, placed: list[Path]) -> Path:
    """Move ``src`` to ``dest`` (replacing an old file or directory there) and remember it for cleanup."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    os.replace(src, dest)
    placed.append(dest)
    return dest


def _backup_database(session: SessionLike, partial: Path, target: Path, result: BackupResult, placed: list[Path],
                     locations: list[str], *, kind: str, keep_log: bool, database_only: bool, pw: bytes,
                     sealing: SealingKey, hm: Home | None, cfg: Config | None, key_passphrase: bytes | None,
                     progress: ProgressCallback | None, chunk: int, max_rate: float | None,
                     base_dir: Path | None) -> None:
    entries: list[FileEntry] = []
    pace = Pacer(max_rate)
    p12_tmp: Path | None = None
    if not database_only:
        assert hm is not None and cfg is not None
        key, certs = _key_material(hm, cfg, session.ca_name, key_passphrase)
        p12_tmp = partial / (session.ca_name + P12_EXT)
        write_p12(p12_tmp, session.ca_name, key, certs, pw)
        entries.append(FileEntry(p12_tmp.name, p12_tmp.stat().st_size, _sha(p12_tmp), "key"))
    dbdir = partial / DB_SUBDIR
    dbdir.mkdir()
    used: set[str] = {MANIFEST_NAME}
    db_rel: str | None = None
    db_file: Path | None = None
    if kind == FULL:
        for entry in session.database_names():
            name = entry[1:]  # spec §1.4: strip the one-character tag before OpenFile
            base = _unique_name(Path(name).name, used)
            size, digest = stream_file(session, name, dbdir / base, "Database files", progress, chunk, pace)
            result.bytes_streamed += size
            entries.append(FileEntry(f"{DB_SUBDIR}/{base}", size, digest, "database"))
            if db_rel is None:
                db_rel, db_file = f"{DB_SUBDIR}/{base}", dbdir / base
    log_paths: list[Path] = []
    gens: list[int] = []
    log_names = session.backup_logs()
    try:  # issue 14: the generations' writer lease epochs (a server from before gives none)
        runs = parse_lineage(getattr(session, "lineage", None))
    except ValueError as e:
        raise CorruptData(ERROR_INVALID_DATA, "backup", f"the server's epoch lineage is malformed: {e}") from None
    bases: list[tuple[Path, Manifest]] = []
    if kind == INCREMENTAL:
        # Found before anything is streamed: an incremental that cannot be chained is refused at once.
        listed = [g for g in (logfile.parse_log_name(Path(e[1:]).name) for e in log_names) if g is not None]
        if listed:
            bases = find_base(target, session.identity, min(listed), pw, base_dir)
    for entry in log_names:
        name = entry[1:]
        base = Path(name).name
        g = logfile.parse_log_name(base)
        if g is None:
            raise CorruptData(ERROR_INVALID_DATA, base, "the server listed a log that is not a generation file")
        base = _unique_name(base, used)
        size, digest = stream_file(session, name, dbdir / base, "Log files", progress, chunk, pace)
        result.bytes_streamed += size
        entries.append(FileEntry(f"{DB_SUBDIR}/{base}", size, digest, "log"))
        log_paths.append(dbdir / base)
        gens.append(g)
    if not gens:
        raise CorruptData(ERROR_FILE_NOT_FOUND, "backup", "the server listed no log generation")
    dyn_dir = partial / DYNAMIC_SUBDIR
    dyn_used: set[str] = set()
    for name in session.dynamic_files():
        dyn_dir.mkdir(exist_ok=True)
        base = _unique_name(Path(name).name, dyn_used)
        size, digest = stream_file(session, name, dyn_dir / base, "Dynamic files", progress, chunk, pace)
        result.bytes_streamed += size
        entries.append(FileEntry(f"{DYNAMIC_SUBDIR}/{base}", size, digest, "dynamic"))
    if hm is not None and hm.config.is_file():
        cdir = partial / CONFIG_SUBDIR
        cdir.mkdir()
        shutil.copyfile(hm.config, cdir / hm.config.name)
        with open(cdir / hm.config.name, "rb") as f:
            os.fsync(f.fileno())
        entries.append(FileEntry(f"{CONFIG_SUBDIR}/{hm.config.name}", (cdir / hm.config.name).stat().st_size,
                                 _sha(cdir / hm.config.name), "config"))
    snap: list[int] = []
    _check_streamed(session.identity, db_file, log_paths, snap)
    for d in (partial / DB_SUBDIR, partial / DYNAMIC_SUBDIR, partial / CONFIG_SUBDIR, partial):
        if d.is_dir():
            fsync_dir(d)
    chain: dict[str, Any] | None = None
    if kind == INCREMENTAL:
        b = pick_base(bases, log_paths[gens.index(min(gens))], session.identity, target)
        chain = {"set_id": b.set_id, "mac": b.mac, "kind": b.kind, "gen_high": b.gen_high}
        if b.lineage:
            chain["epoch"] = b.lineage[-1].epoch  # issue 14: the epoch the base ended in (verify-backup checks it)
    manifest = Manifest(kind=kind, ca_name=session.ca_name, identity=session.identity,
                        created=datetime.now(UTC).isoformat(), gen_low=min(gens), gen_high=max(gens),
                        snapshot_lsn=snap[0] if snap else None, database=db_rel, locations=list(locations),
                        files=entries, set_id=secrets.token_hex(16), base=chain, lineage=runs)
    # Move the pieces into place; the manifest comes last, so until then the set is incomplete.
    if p12_tmp is not None:
        result.p12 = _place(p12_tmp, target / p12_tmp.name, placed)
    for sub in (DYNAMIC_SUBDIR, CONFIG_SUBDIR):
        if (partial / sub).is_dir():
            _place(partial / sub, target / sub, placed)
        elif (target / sub).exists() and (target / sub).is_dir():
            shutil.rmtree(target / sub)  # --force over an older set: drop what this set does not have
    _place(dbdir, target / DB_SUBDIR, placed)
    fsync_dir(target)
    write_manifest(target, manifest, sealing)
    result.manifest = manifest
    result.files = entries
    placed.clear()  # the set is complete: a later failure (truncation, End) must not remove it
    if kind == FULL and not keep_log:
        # spec §2.9: only now that every file is secured on disk.
        if progress:
            progress(Progress("Truncating logs", "", 1, 0, 0))
        deleted = session.truncate_logs()
        result.truncated = list(deleted) if isinstance(deleted, list) else []
        if progress:
            progress(Progress("Truncating logs", "", 1, 1, 1))


__all__ = ["BackupResult", "Progress", "SessionLike", "run_backup", "write_p12"]
