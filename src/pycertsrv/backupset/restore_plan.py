"""The planned restore of backup sets (``certsrv restore``, the plan half): check, order and chain the sets.

:func:`plan_restore` checks a full set and its incrementals (each authenticated with the sets' password),
orders and chains them, and works out what goes where in the home; nothing is written. The plan is carried
out by :mod:`pycertsrv.backupset.restore_run`.
"""

from __future__ import annotations

import hashlib
import tomllib
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
    ERROR_DIRECTORY,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    ERROR_INVALID_PASSWORD,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CorruptData,
    InvalidArgument,
    NotFound,
    SequenceError,
)
from ..fsutil import (
    HomeLock,
)
from ..home import Home
from ..spec import TAG_CERTSERVER_DATABASE
from ..store import logfile
from .manifest import CONFIG_SUBDIR, DB_SUBDIR, KEY_KIND, P12_EXT
from .setcheck import SetInfo, check_chain, check_digest, listed_p12, verify_set

ProgressCallback = Callable[[str], None]




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
    plan.backup_db_name = next((loc[1:] for loc in m0.locations if loc[:1] == TAG_CERTSERVER_DATABASE),
                               str(plan.database_target))
    plan.backup_log_path = h.restore_log_dir
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
        cfg, plan.config_text = _load_config_text(src, plan.expected.get(src))
        if cfg.store.url:
            # Issue 12: the restore command chooses the engine, not the set: without --database the database
            # is restored into this home (SQLite); --database URL sets [store] url once it is in PostgreSQL.
            plan.config_text = config_mod.dumps(cfg.model_copy(update={"store": cfg.store.model_copy(
                update={"url": None})}))
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
