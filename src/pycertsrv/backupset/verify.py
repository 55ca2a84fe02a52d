"""Checking a backup set without restoring it (``certsrv verify-backup``).

Checks, each naming the bad file: the manifest parses; every listed file exists inside the set
with its size and SHA-256; nothing unlisted sits in ``DataBase/``; the generations
``gen_low..gen_high`` are all present, each log's header carries the manifest's identity and
its own generation, its records are whole and LSNs continue from one generation to the next
(``store.logfile.scan``); for a full set, the database opens read-only, passes SQLite's
integrity check, carries the same identity and CA name, sits at ``snapshot_lsn``, and the first
log continues right after that LSN; the epoch lineage (issue 14, :mod:`.lineage`) covers the generations with
rising epochs and an incremental's continues its base's (the base set beside it, when it is there). Then the
manifest's authenticator (:mod:`.setauth`): with the
set's password, a set that passes is what its writer wrote; without it only the structure was
checked and the report says so (``authenticated`` False, ``auth_checked`` False). A set from
before authenticated sets is a problem unless ``allow_unauthenticated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    JET_ERR_BAD_LOG_SIGNATURE,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_LOG_FILE_CORRUPT,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CertSrvError,
    hresult_name,
)
from ..fsutil import sha256_file
from ..store import logfile, setdb
from .chain import named_base
from .lineage import FORK, WHAT_TO_DO, continuation_problem, last_epoch
from .lineage import problems as lineage_problems
from .manifest import DB_SUBDIR, KEY_KIND, MANIFEST_NAME, Manifest, manifest_path, read_manifest, safe_relative
from .setauth import authenticate


@dataclass(frozen=True)
class Problem:
    """One failed check: the file (relative to the set), the HRESULT, what is wrong."""

    path: str
    hresult: int
    message: str

    def __str__(self) -> str:
        # The same shape as every refusal: subject, HRESULT in hex with its symbolic name, message.
        return f"{self.path}: 0x{self.hresult:08X} {hresult_name(self.hresult)}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_backup`."""

    directory: Path
    manifest: Manifest | None = None
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    records: int = 0
    lsn_range: tuple[int, int] | None = None
    auth_checked: bool = False  # a password was given and the authenticator was checked
    authenticated: bool = False  # ... and it matched
    unauthenticated_allowed: bool = False  # a set without authenticator, accepted by --allow-unauthenticated

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.problems

    def add(self, path: str, hresult: int, message: str) -> None:
        """Record a failed check."""
        self.problems.append(Problem(path, hresult, message))

    def to_json(self) -> dict[str, Any]:
        """The report as plain data (``--json``)."""
        m = self.manifest
        return {"directory": str(self.directory), "ok": self.ok,
                "kind": m.kind if m else None, "ca_name": m.ca_name if m else None,
                "identity": m.identity if m else None, "gen_low": m.gen_low if m else None,
                "gen_high": m.gen_high if m else None, "snapshot_lsn": m.snapshot_lsn if m else None,
                "files_checked": len(self.checked), "log_records": self.records,
                "lsn_range": list(self.lsn_range) if self.lsn_range else None,
                "lineage": [r.to_json() for r in m.lineage] if m and m.lineage is not None else None,
                "auth_checked": self.auth_checked, "authenticated": self.authenticated,
                "unauthenticated_allowed": self.unauthenticated_allowed,
                "problems": [{"path": p.path, "hresult": p.hresult, "hresult_hex": f"0x{p.hresult:08X}",
                              "name": hresult_name(p.hresult), "message": p.message} for p in self.problems]}


def verify_backup(directory: Path | str, password: bytes | None = None, *,
                  allow_unauthenticated: bool = False) -> VerifyReport:
    """Check a backup set (see the module docstring); never modifies it.

    :param directory: the set directory (holding ``DataBase/certbkxp.dat``).
    :param password: the set's password: its authenticator is checked (without it, only the structure).
    :param allow_unauthenticated: accept a set that has no authenticator (written before they existed).
    """
    root = Path(directory).absolute()
    rep = VerifyReport(root)
    rel_manifest = f"{DB_SUBDIR}/{MANIFEST_NAME}"
    try:
        m = read_manifest(root)
    except CertSrvError as e:
        rep.add(rel_manifest, e.hresult, e.message)
        return rep
    rep.manifest = m
    _check_auth(rep, m, password, allow_unauthenticated)
    if rep.problems:
        return rep  # nothing the manifest says can be trusted: its other findings would only distract
    good: dict[str, Path] = {}
    for f in m.files:
        if not safe_relative(f.path):
            rep.add(rel_manifest, ERROR_INVALID_DATA, f"file path {f.path!r} leaves the backup set")
            continue
        p = root / f.path
        if p.is_symlink() or not p.is_file():
            rep.add(f.path, ERROR_FILE_NOT_FOUND, "listed in the manifest but missing (or not a regular file)")
            continue
        size = p.stat().st_size
        if size != f.size:
            rep.add(f.path, ERROR_INVALID_DATA, f"size {size} bytes, the manifest says {f.size}")
            continue
        digest = sha256_file(p)
        if digest != f.sha256:
            rep.add(f.path, ERROR_INVALID_DATA, f"SHA-256 {digest[:16]}… does not match the manifest")
            continue
        rep.checked.append(f.path)
        good[f.path] = p
    listed = {f.path for f in m.files}
    dbdir = root / DB_SUBDIR
    if dbdir.is_dir():
        for p in sorted(dbdir.iterdir()):
            rel = f"{DB_SUBDIR}/{p.name}"
            if p.name != MANIFEST_NAME and rel not in listed:
                rep.add(rel, ERROR_INVALID_DATA, "not listed in the manifest (left over from another backup?)")
    try:
        ident = bytes.fromhex(m.identity)
    except ValueError:
        rep.add(rel_manifest, ERROR_INVALID_DATA, f"identity {m.identity!r} is not hex")
        return rep
    if m.kind == KEY_KIND:
        keys = m.files_by_role("key")
        if len(keys) != 1 or len(m.files) != 1:
            rep.add(rel_manifest, ERROR_INVALID_DATA, "a key-only set must list exactly one PKCS#12 and nothing else")
        return rep
    _check_logs(rep, m, good, ident)
    _check_lineage(rep, m, root)
    if m.kind == "full":
        _check_database(rep, m, good, root)
    elif m.database is not None or m.files_by_role("database"):
        rep.add(rel_manifest, ERROR_INVALID_DATA, "an incremental set lists a database file")
    return rep


def _check_auth(rep: VerifyReport, m: Manifest, password: bytes | None, allow_unauthenticated: bool) -> None:
    """The authenticator first: a forged set is reported as forged, whatever else is wrong with it."""
    rel_manifest = f"{DB_SUBDIR}/{MANIFEST_NAME}"
    if m.auth is None and allow_unauthenticated:
        rep.unauthenticated_allowed = True
        return
    if password is None and m.auth is not None:
        return  # structure only; the caller says that authenticity was not checked
    assert m.document is not None
    rep.auth_checked = password is not None
    try:
        authenticate(m.document, password, str(rep.directory))
    except CertSrvError as e:
        rep.add(rel_manifest, e.hresult, e.message)
        return
    rep.authenticated = True


def _check_logs(rep: VerifyReport, m: Manifest, good: dict[str, Path], ident: bytes) -> None:
    logs: dict[int, str] = {}
    for f in m.files_by_role("log"):
        g = logfile.parse_log_name(Path(f.path).name)
        if g is None:
            rep.add(f.path, ERROR_INVALID_DATA, "a log entry whose name is not edbXXXXXXXX.log")
            continue
        logs[g] = f.path
    for g in sorted(logs):
        if not m.gen_low <= g <= m.gen_high:
            rep.add(logs[g], ERROR_INVALID_DATA, f"generation {g:08X} is outside {m.gen_low:08X}..{m.gen_high:08X}")
    prev_last: int | None = None
    prev_name = ""
    first_lsn: int | None = None
    for g in range(m.gen_low, m.gen_high + 1):
        rel = logs.get(g)
        if rel is None:
            rep.add(f"{DB_SUBDIR}/{logfile.log_name(g)}", JET_ERR_MISSING_RESTORE_LOG_FILES,
                    f"generation {g:08X} is missing from the set")
            prev_last = None
            continue
        path = good.get(rel)
        if path is None:
            prev_last = None
            continue  # already reported (missing, size or hash)
        try:
            res, _ = logfile.scan(path, ident)
        except CertSrvError as e:
            rep.add(rel, e.hresult, e.message)
            prev_last = None
            continue
        if res.bad_offset is not None:
            rep.add(rel, JET_ERR_LOG_FILE_CORRUPT, f"bad record at offset {res.bad_offset}: {res.bad_reason}")
        h = res.header
        if prev_last is not None and h.first_lsn != prev_last + 1:
            rep.add(rel, JET_ERR_BAD_LOG_SIGNATURE,
                    f"starts at LSN {h.first_lsn} but {prev_name} ends at LSN {prev_last}")
        last = res.last_lsn if res.last_lsn is not None else h.first_lsn - 1
        if first_lsn is None:
            first_lsn = h.first_lsn
        rep.records += res.records
        rep.lsn_range = (first_lsn, last)
        prev_last, prev_name = last, Path(rel).name


def _check_lineage(rep: VerifyReport, m: Manifest, root: Path) -> None:
    """Issue 14: the set's epoch runs cover its generations with rising epochs, and an incremental starts in the
    epoch its base ended in or later — the base's own manifest agreeing, when the base set is beside this one."""
    rel_manifest = f"{DB_SUBDIR}/{MANIFEST_NAME}"
    if m.lineage is None:
        return  # written before lineages
    for own in lineage_problems(m.lineage, m.gen_low, m.gen_high):
        rep.add(rel_manifest, FORK, f"{own}; {WHAT_TO_DO}")
    if m.kind != "incremental" or not m.base:
        return
    base_epoch = m.base.get("epoch")
    why = continuation_problem(base_epoch, m.lineage, str(m.base.get("set_id", "?"))[:16] + "…")
    if why is not None:
        rep.add(rel_manifest, FORK, f"{why}; {WHAT_TO_DO}")
    found = named_base(root, m.base)
    if found is None:
        return
    bdir, bm = found
    if bm.gen_high + 1 != m.gen_low:
        rep.add(rel_manifest, FORK, f"its base {bdir.name} ends at generation {bm.gen_high:08X}, this set "
                f"starts at {m.gen_low:08X}; {WHAT_TO_DO}")
    last = last_epoch(bm.lineage)
    if last is not None and (base_epoch != last or m.lineage[0].epoch < last):
        rep.add(rel_manifest, FORK,
                f"its base {bdir.name} ended in epoch {last} but this set records epoch {base_epoch} for it and "
                f"starts in epoch {m.lineage[0].epoch if m.lineage else '?'}: the lineage does not continue its "
                f"base's (forked or forged); {WHAT_TO_DO}")


def _check_database(rep: VerifyReport, m: Manifest, good: dict[str, Path], root: Path) -> None:
    rel_manifest = f"{DB_SUBDIR}/{MANIFEST_NAME}"
    dbs = m.files_by_role("database")
    if m.database is None or not dbs or m.database not in {f.path for f in dbs}:
        rep.add(rel_manifest, ERROR_INVALID_DATA, "a full set must name its database file")
        return
    path = good.get(m.database)
    if path is None:
        return
    try:
        meta = setdb.read_meta(path)
        check = setdb.check_integrity(path)
    except setdb.UnreadableDatabase as e:
        rep.add(m.database, JET_ERR_DATABASE_CORRUPTED, f"not a readable pycertsrv database: {e}")
        return
    if check != "ok":
        rep.add(m.database, JET_ERR_DATABASE_CORRUPTED, f"integrity check failed: {check}")
    if meta.get("identity") != m.identity:
        rep.add(m.database, JET_ERR_BAD_LOG_SIGNATURE,
                f"database identity {meta.get('identity')} is not the manifest's {m.identity}")
    if meta.get("name") != m.ca_name:
        rep.add(m.database, ERROR_INVALID_DATA, f"database belongs to CA {meta.get('name')!r}, not {m.ca_name!r}")
    applied = int(meta.get("applied_lsn", "-1"))
    if m.snapshot_lsn is not None and applied != m.snapshot_lsn:
        rep.add(m.database, ERROR_INVALID_DATA, f"database is at LSN {applied}, the manifest says {m.snapshot_lsn}")
    if rep.lsn_range is not None:
        first = _first_lsn(root, m)
        if first is not None and first > applied + 1:
            rep.add(f"{DB_SUBDIR}/{logfile.log_name(m.gen_low)}", JET_ERR_MISSING_RESTORE_LOG_FILES,
                    f"starts at LSN {first} but the database needs LSN {applied + 1}")


def _first_lsn(root: Path, m: Manifest) -> int | None:
    for f in m.files_by_role("log"):
        if logfile.parse_log_name(Path(f.path).name) == m.gen_low:
            try:
                return logfile.read_header(root / f.path).first_lsn
            except CertSrvError:
                return None
    return None


__all__ = ["Problem", "VerifyReport", "manifest_path", "verify_backup"]
