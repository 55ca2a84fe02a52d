"""Chaining an incremental backup set to the set it continues (issue 9 finding 4: no splicing of sets).

An incremental set's manifest names, under its own authenticator, the set it continues: that set's
random ``set_id`` and its MAC (``base``). The writer finds that set among the directories beside the
new one (or ``--base DIR``): an authentic set (same password) of the same database whose generations
end right before the incremental's first. ``certsrv restore`` then requires every incremental to name
exactly the set before it, so an incremental of another chain (another CA, or the same database after
a restore started a new timeline) cannot be slipped in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import (
    JET_ERR_MISSING_FULL_BACKUP,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CertSrvError,
    InvalidArgument,
    NotFound,
)
from ..store import logfile
from .manifest import KEY_KIND, Manifest, read_manifest


def find_base(target: Path, identity: str, gen_low: int, password: bytes,
              base_dir: Path | None) -> list[tuple[Path, Manifest]]:
    """The set(s) an incremental starting at ``gen_low`` continues: authentic (this password) sets of the same
    database whose generations end at ``gen_low - 1`` — ``base_dir``, or else the directories beside ``target``.

    The incremental's manifest names the one it continues (its set id and MAC, under its own MAC), so a restore
    cannot be given an incremental of another chain (issue 9 finding 4: no splicing).
    """
    from .setauth import authenticate

    cands = [base_dir] if base_dir is not None else sorted(
        p for p in target.parent.iterdir() if p != target and p.is_dir() and not p.is_symlink())
    found: dict[tuple[str, str], tuple[Path, Manifest]] = {}
    seen: list[str] = []
    for d in cands:
        try:
            m = read_manifest(d)
        except CertSrvError as e:
            if base_dir is not None:
                raise InvalidArgument(e.hresult, str(d), f"--base is not a backup set: {e.message}") from None
            continue
        if m.identity != identity or m.kind == KEY_KIND or m.gen_high != gen_low - 1:
            if base_dir is not None:
                raise InvalidArgument(JET_ERR_MISSING_RESTORE_LOG_FILES, str(d),
                                      f"--base ends at generation {m.gen_high:08X} of database {m.identity}; this "
                                      f"incremental starts at {gen_low:08X} of {identity}")
            continue
        assert m.document is not None
        try:
            mac = authenticate(m.document, password, str(d))
        except CertSrvError:
            if base_dir is not None:
                raise
            seen.append(d.name)
            continue
        found.setdefault((m.set_id, mac), (d, m))
    if not found:
        extra = f" ({', '.join(seen)} did not authenticate with this password)" if seen else ""
        raise NotFound(JET_ERR_MISSING_FULL_BACKUP, str(target),
                       f"no authentic backup set ending at generation {gen_low - 1:08X} beside this directory"
                       f"{extra}: an incremental is chained to the set before it; write it beside that set, "
                       "give --base DIR, or take a full backup")
    return list(found.values())


def _last_lsn(m: Manifest, set_dir: Path) -> int | None:
    for f in m.files_by_role("log"):
        if logfile.parse_log_name(Path(f.path).name) == m.gen_high:
            with contextlib.suppress(CertSrvError, OSError):
                res, _ = logfile.scan(set_dir / f.path, bytes.fromhex(m.identity))
                return res.last_lsn
    return None


def pick_base(bases: list[tuple[Path, Manifest]], first_log: Path, identity: str, target: Path) -> Manifest:
    """One base among several candidates (after a restore, sets of the old and the new timeline can both end at
    the generation before this one): those whose last LSN the first streamed generation continues, and of
    those the newest (``created`` is under each set's MAC). The server requires a full backup after a
    restore (spec §2.17), so the newest fitting set is the one the server recorded last; ``--base`` overrides.
    """
    if len(bases) == 1:
        return bases[0][1]
    first = logfile.read_header(first_log, bytes.fromhex(identity)).first_lsn
    fits = [(d, m) for d, m in bases if _last_lsn(m, d) == first - 1] or bases
    return max(fits, key=lambda dm: dm[1].created)[1]


def named_base(set_dir: Path, base: dict[str, object] | None) -> tuple[Path, Manifest] | None:
    """The set beside ``set_dir`` that an incremental's ``base`` names (same set id and MAC), if it is there."""
    if not base or not isinstance(base.get("set_id"), str):
        return None
    parent = Path(set_dir).parent
    for d in sorted(parent.iterdir()) if parent.is_dir() else []:
        if d == set_dir or not d.is_dir() or d.is_symlink():
            continue
        with contextlib.suppress(CertSrvError, OSError):
            m = read_manifest(d)
            if m.set_id == base["set_id"] and m.mac == base.get("mac"):
                return d, m
    return None


__all__ = ["find_base", "named_base", "pick_base"]
