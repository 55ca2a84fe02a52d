"""The archive's part of a restore (issue 13): ``certsrv restore FULLSET [INCR…] --archive DEST``.

After the sets' generations, the archived generations of the same CA and lineage that follow them
are added to the plan (copied to the backup log path and registered like an incremental's), so the
CA's next start replays the set first, then the archive, up to ``--until`` or the archive's end.
Every archived generation used is checked first (identity, CRC, continuity, lineage): a damaged
archive refuses the restore, naming the first bad file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import (
    ERROR_FILE_NOT_FOUND,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CorruptData,
    InvalidArgument,
    NotFound,
)
from ..store import archivemark, logfile, setdb
from .verify import Chain, check_chain


def set_lineage(database: Path) -> str | None:
    """The archive lineage recorded in a backup set's database file (None: none recorded)."""
    try:
        value = setdb.read_settings(database).get(archivemark.SETTING_LINEAGE)
    except setdb.UnreadableDatabase:
        return None
    if value is None:
        return None
    # A path component under the archive: only the hex ids the store writes are taken.
    return value if value and all(c in "0123456789abcdef" for c in value) else None


def _lineage_dir(dest: Path, identity: str, lineage: str | None) -> Path:
    idir = dest / identity
    if not idir.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(idir),
                       f"the archive holds nothing of this CA (database {identity}); check --archive")
    if lineage is not None:
        return idir / lineage
    dirs = sorted(p for p in idir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(dirs) != 1:
        raise InvalidArgument(JET_ERR_MISSING_RESTORE_LOG_FILES, str(idir),
                              "the full set records no archive lineage and the archive holds "
                              f"{len(dirs)} lineages of this CA; restore from a set taken with archiving on")
    return dirs[0]


def following(dest: Path, identity: str, database: Path, gen_high: int,
              last_log: Path | None) -> tuple[Path, Chain | None, int | None]:
    """The archived generations that would follow sets ending at ``gen_high`` (the restore's rule).

    The lineage is the one recorded in the full set's database (or the archive's only lineage of
    this CA); the generations are checked from ``gen_high + 1`` on (:func:`check_chain`: the
    checked ones, then the first problem in ``chain.error``). Also used by ``certsrv catalog
    --archive`` (issue 16), so the catalog never promises what a restore would refuse.

    :param dest: the archive directory.
    :param identity: the sets' database identity.
    :param database: the full set's database file.
    :param gen_high: the sets' highest generation.
    :param last_log: the sets' last log file (its last LSN must be followed by the archive's first).
    :returns: the lineage directory, its checked generations (None: no such directory) and the
        sets' last LSN (None: no log).
    """
    ldir = _lineage_dir(dest, identity, set_lineage(database))
    set_last = None
    if last_log is not None:
        res, _ = logfile.scan(last_log, bytes.fromhex(identity))
        set_last = res.last_lsn if res.last_lsn is not None else res.header.first_lsn - 1
    chain = check_chain(ldir, identity, ldir.name, low=gen_high + 1) if ldir.is_dir() else None
    return ldir, chain, set_last


def continuity_error(chain: Chain, set_last: int | None) -> CorruptData | None:
    """Whether the archive's first generation fails to continue the sets' last LSN (another lineage, or a gap)."""
    if not chain.generations or set_last is None:
        return None
    first = chain.generations[0]
    if first.first_lsn == set_last + 1:
        return None
    return CorruptData(JET_ERR_MISSING_RESTORE_LOG_FILES, str(first.path),
                       f"starts at LSN {first.first_lsn} but the sets end at LSN {set_last}: the archive does not "
                       "continue these sets (another lineage or a missing generation)")


def add_archive(plan: Any, dest: Path | str) -> dict[str, Any]:
    """Extend a restore plan with the archived generations after its sets; returns what was added.

    :param plan: a :class:`pycertsrv.backup.restore.RestorePlan` with its sets ordered.
    :param dest: the archive directory.
    """
    dest = Path(dest).absolute()
    if not dest.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(dest), "no such archive directory (--archive)")
    if plan.database_source is None or plan.identity is None:
        raise InvalidArgument(JET_ERR_MISSING_RESTORE_LOG_FILES, "--archive",
                              "the archive applies to a database restore")
    last_src = plan.logs[-1][0] if plan.logs else None
    low = plan.gen_high + 1
    ldir, chain, set_last = following(dest, plan.identity, plan.database_source, plan.gen_high, last_src)
    info: dict[str, Any] = {"dest": str(dest), "lineage": ldir.name, "directory": str(ldir), "gen_low": None,
                            "gen_high": None, "generations": 0, "last_lsn": set_last}
    if chain is None or (not chain.generations and chain.error is None):
        info["note"] = f"the archive has no generation after {logfile.log_name(plan.gen_high)}"
        plan.archive = info
        return info
    if chain.error is not None:
        e = chain.error
        raise CorruptData(e.hresult, e.function, f"{e.message}; the restore refuses a damaged archive "
                          "(certsrv verify-archive names every problem)")
    mismatch = continuity_error(chain, set_last)
    if mismatch is not None:
        raise mismatch
    for g in chain.generations:
        plan.logs.append((g.path, plan.backup_log_path / logfile.log_name(g.generation)))
    plan.archive_range = (low, chain.generations[-1].generation)
    plan.gen_high = chain.generations[-1].generation
    info.update(gen_low=logfile.log_name(low), gen_high=logfile.log_name(plan.gen_high),
                generations=len(chain.generations), last_lsn=chain.generations[-1].last_lsn)
    plan.archive = info
    return info
