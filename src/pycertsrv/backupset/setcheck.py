"""The restore's checks of the sets it is given (issue 9 finding 4): each set authenticated with the password
before anything is written, each incremental continuing exactly the set before it, and every file re-hashed on
the bytes actually read or copied, so a file swapped on the backup storage after the check is refused too."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ERROR_INVALID_PASSWORD, NTE_BAD_SIGNATURE, CorruptData, InvalidArgument
from ..fsutil import sha256_file
from .manifest import MANIFEST_NAME, Manifest


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


def verify_set(d: Path, password: bytes | None, allow_unauthenticated: bool, warnings: list[str]) -> Manifest:
    """The backup helper's verify_backup with the set's password; any problem refuses the set, naming it.

    Issue 9 finding 4: a set whose authenticator does not match (or that has none, unless
    ``allow_unauthenticated``) is refused before anything is written — the check runs over the same
    manifest whose sizes and SHA-256 the other checks compare the files with.
    """
    from .setauth import BadAuthenticator, WrongPassword
    from .verify import verify_backup

    if not password:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(d),
                              "the set's password is needed to check its authenticity: give --password-file")
    rep = verify_backup(d, password, allow_unauthenticated=allow_unauthenticated)
    if not rep.ok:
        p = rep.problems[0]
        more = f" (and {len(rep.problems) - 1} more problem(s))" if len(rep.problems) > 1 else ""
        if p.hresult == ERROR_INVALID_PASSWORD:
            raise WrongPassword(p.hresult, str(d), p.message)
        if p.path.endswith(MANIFEST_NAME) and rep.manifest is not None and not rep.authenticated \
                and not rep.unauthenticated_allowed:
            raise BadAuthenticator(p.hresult, str(d), p.message + more)
        raise CorruptData(p.hresult, str(d / p.path), p.message + more)
    if rep.unauthenticated_allowed:
        warnings.append(f"{d}: this set has NO authenticator (written before authenticated backup sets); it is "
                        "restored only because of --allow-unauthenticated — anyone who could write the backup "
                        "storage could have changed it")
    assert rep.manifest is not None
    return rep.manifest


def listed_p12(d: Path, m: Manifest) -> Path | None:
    """The PKCS#12 the (authenticated) manifest lists — never another .p12 someone put beside it."""
    keys = m.files_by_role("key")
    return d / keys[0].path if keys else None


def check_chain(prev: SetInfo, s: SetInfo) -> None:
    """An incremental names, under its authenticator, the set it continues (:mod:`.chain`): it must be ``prev``.
    Sets without authenticators (--allow-unauthenticated) carry no such link and were warned about."""
    m, pm = s.manifest, prev.manifest
    assert m is not None and pm is not None
    if m.auth is None or pm.auth is None:
        return
    b = m.base or {}
    if b.get("set_id") != pm.set_id or b.get("mac") != pm.mac:
        raise CorruptData(NTE_BAD_SIGNATURE, str(s.directory),
                          f"this incremental does not continue {prev.directory} (it names set "
                          f"{str(b.get('set_id'))[:16]}…, that one is {pm.set_id[:16]}…): the sets come from "
                          "different backup chains; give the full set and the incrementals taken after it")


def check_digest(src: Path, got: str, want: str | None) -> None:
    if want is not None and not hmac.compare_digest(got, want):
        raise CorruptData(NTE_BAD_SIGNATURE, str(src), "changed on the backup storage after the set was verified "
                          "(its SHA-256 no longer matches the authenticated manifest); nothing more is restored")


def check_copy(src: Path, tmp: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    try:
        check_digest(src, sha256_file(tmp), sha256)
    except CorruptData:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["check_chain", "check_copy", "check_digest", "listed_p12", "verify_set"]
