"""``DataBase/certbkxp.dat``: the backup set's manifest (spec §5.4, CONTRACTS "Backup set layout").

certutil keeps the raw RestoreGetDatabaseLocations bytes in this file (spec §2.12 [INF]); ours is
a JSON document (UTF-8) that keeps those locations as tag-prefixed strings and adds the backup
type, generations, database identity and a SHA-256 of every file. It is written last and
atomically: a set without it is incomplete. It carries the set's authenticator (``auth``, an
HMAC keyed from the set's password: :mod:`.setauth`), its random ``set_id`` and, for an
incremental, the set it continues (``base``: that set's id and MAC), so the sets of one chain
cannot be spliced with another's. A key-only set has a manifest too (kind ``key``, no
generations) so that its PKCS#12 is authenticated like every other set's files.

Issue 14: ``lineage`` records the writer lease epoch of every generation (runs, :mod:`.lineage`) and an
incremental's ``base`` the epoch its base ended in. Manifests written before have neither and stay readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import ERROR_FILE_NOT_FOUND, ERROR_INVALID_DATA, CorruptData, NotFound
from ..fsutil import atomic_write
from ..spec import wszDBBACKUPCERTBACKDAT, wszDBBACKUPSUBDIR, wszPFXFILENAMEEXT
from .lineage import Run
from .lineage import parse as parse_lineage

if TYPE_CHECKING:
    from .setauth import SealingKey

FORMAT = "pycertsrv-backup/1"
DB_SUBDIR = wszDBBACKUPSUBDIR  # spec §1.3
MANIFEST_NAME = wszDBBACKUPCERTBACKDAT  # spec §1.3
DYNAMIC_SUBDIR = "Dynamic"
CONFIG_SUBDIR = "Config"
P12_EXT = wszPFXFILENAMEEXT  # spec §1.3
ROLES = ("database", "log", "dynamic", "config", "key")
KINDS = ("full", "incremental", "key")
KEY_KIND = "key"


@dataclass(frozen=True)
class FileEntry:
    """One file of a set: path relative to the set directory, size, SHA-256, role."""

    path: str
    size: int
    sha256: str
    role: str

    def to_json(self) -> dict[str, Any]:
        """The entry as plain data."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "role": self.role}


@dataclass
class Manifest:
    """The content of ``certbkxp.dat``."""

    kind: str
    ca_name: str
    identity: str
    created: str
    gen_low: int
    gen_high: int
    snapshot_lsn: int | None = None
    database: str | None = None
    locations: list[str] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    format: str = FORMAT
    set_id: str = ""
    base: dict[str, Any] | None = None
    lineage: list[Run] | None = None  # issue 14: epoch runs of the generations (None: written before lineages)
    # As read: the authenticator, and the whole document the parser read (what the MAC is checked over).
    auth: dict[str, Any] | None = field(default=None, compare=False)
    document: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain data (the file's JSON document, without its authenticator)."""
        doc = {"format": self.format, "kind": self.kind, "ca_name": self.ca_name, "identity": self.identity,
               "created": self.created, "gen_low": self.gen_low, "gen_high": self.gen_high,
               "snapshot_lsn": self.snapshot_lsn, "database": self.database, "locations": list(self.locations),
               "files": [f.to_json() for f in self.files], "set_id": self.set_id, "base": self.base}
        if self.lineage is not None:  # absent, not null, in a set without one: the format stays what it was
            doc["lineage"] = [r.to_json() for r in self.lineage]
        return doc

    @property
    def mac(self) -> str | None:
        """The authenticator's MAC (hex) as written in the file, or None for an unauthenticated set."""
        v = self.auth.get("mac") if self.auth else None
        return v if isinstance(v, str) else None

    def files_by_role(self, role: str) -> list[FileEntry]:
        """Entries of one role, in manifest order."""
        return [f for f in self.files if f.role == role]


def manifest_path(set_dir: Path) -> Path:
    """Where a set's manifest lives."""
    return Path(set_dir) / DB_SUBDIR / MANIFEST_NAME


def safe_relative(rel: str) -> bool:
    """Whether a manifest path stays inside the set (relative, no ``..``, no empty parts)."""
    if not rel or "\\" in rel or "\0" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in p.parts)


def write_manifest(set_dir: Path, manifest: Manifest, password: bytes | SealingKey) -> Path:
    """Authenticate the manifest with ``password`` and write it atomically and durably; returns its path.

    :param set_dir: the backup set directory.
    :param manifest: what to write (its ``auth`` and ``document`` are set to what was written).
    :param password: the set's password, or keys derived from it (keys the authenticator, :func:`.setauth.seal`).
    """
    from .setauth import seal

    path = manifest_path(set_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = seal(manifest.to_json(), password)
    data = json.dumps(doc, indent=2, sort_keys=False).encode() + b"\n"
    atomic_write(path, data, mode=0o600)
    manifest.auth, manifest.document = doc["auth"], doc
    return path


def _bad(path: Path, why: str) -> CorruptData:
    return CorruptData(ERROR_INVALID_DATA, str(path), f"not a valid backup manifest: {why}")


def parse_manifest(doc: Any, path: Path) -> Manifest:
    """Validate a decoded manifest document.

    :param doc: the JSON value read from the file.
    :param path: the file (named in errors).
    """
    if not isinstance(doc, dict):
        raise _bad(path, "not a JSON object")
    if doc.get("format") != FORMAT:
        raise _bad(path, f"format {doc.get('format')!r} is not {FORMAT!r}")
    if doc.get("kind") not in KINDS:
        raise _bad(path, f"kind {doc.get('kind')!r} is not full or incremental")
    for k in ("ca_name", "identity", "created"):
        if not isinstance(doc.get(k), str):
            raise _bad(path, f"{k} is missing")
    lowest = 0 if doc["kind"] == KEY_KIND else 1  # a key-only set has no generations
    for k in ("gen_low", "gen_high"):
        if not isinstance(doc.get(k), int) or isinstance(doc[k], bool) or doc[k] < lowest:
            raise _bad(path, f"{k} is not a generation number")
    if doc["gen_high"] < doc["gen_low"]:
        raise _bad(path, "gen_high is below gen_low")
    files: list[FileEntry] = []
    for i, f in enumerate(doc.get("files") or []):
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("size"), int) \
                or not isinstance(f.get("sha256"), str) or f.get("role") not in ROLES:
            raise _bad(path, f"files[{i}] is malformed")
        files.append(FileEntry(f["path"], f["size"], f["sha256"].lower(), f["role"]))
    snap = doc.get("snapshot_lsn")
    db = doc.get("database")
    locs = doc.get("locations") or []
    if not isinstance(locs, list) or not all(isinstance(x, str) for x in locs):
        raise _bad(path, "locations is not a list of strings")
    set_id, base, auth = doc.get("set_id", ""), doc.get("base"), doc.get("auth")
    if not isinstance(set_id, str):
        raise _bad(path, "set_id is not a string")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("set_id"), str)
                                 and isinstance(base.get("mac"), str)):
        raise _bad(path, "base is not {set_id, mac}")
    if auth is not None and not isinstance(auth, dict):
        raise _bad(path, "auth is not an object")
    try:
        runs = parse_lineage(doc.get("lineage"))
    except ValueError as e:
        raise _bad(path, str(e)) from None
    return Manifest(kind=doc["kind"], ca_name=doc["ca_name"], identity=doc["identity"], created=doc["created"],
                    gen_low=doc["gen_low"], gen_high=doc["gen_high"],
                    snapshot_lsn=snap if isinstance(snap, int) else None,
                    database=db if isinstance(db, str) else None, locations=list(locs), files=files,
                    set_id=set_id, base=base, lineage=runs, auth=auth, document=doc)


def read_manifest(set_dir: Path) -> Manifest:
    """Read and validate a set's manifest.

    :param set_dir: the backup set directory.
    """
    path = manifest_path(set_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(path),
                       "no manifest: not a backup set, or an incomplete one") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"not JSON ({e})") from None
    return parse_manifest(doc, path)
