"""The continuous log archive's part of the recovery window (``certsrv catalog DIR --archive DEST``, issue 16).

A chain of sets reaches the last record of its last set; with an archive (issue 13) it reaches on
through the archived generations that continue it, up to the last archived record. Which ones
continue it is the restore's own rule (:func:`pycertsrv.archive.restore.following`: the same CA,
the lineage recorded in the full set's database, generations from the sets' highest + 1 with no
missing generation, the first one's LSN right after the sets' last), so a moment the catalog
offers is one ``certsrv restore ... --archive DEST --until T`` replays. A missing or damaged
archived generation ends the chain's archive coverage there and is named as a gap.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from ..archive.restore import continuity_error, following
from ..errors import ERROR_FILE_NOT_FOUND, JET_ERR_MISSING_LOG_FILE, CertSrvError, NotFound
from ..store import logfile
from .catalog_model import ArchiveReach, Chain, Gap, human, iso
from .manifest import DB_SUBDIR

DEFAULT_MAX_ARCHIVE_AGE = timedelta(minutes=15)


def _missing(directory: Path, after: int) -> tuple[int, int | None]:
    """The missing generations from ``after``: up to the next one present (None: none after)."""
    later = [g for g in logfile.list_generations(directory) if g > after]
    return after, (min(later) - 1 if later else None)


def extend_chain(chain: Chain, dest: Path, later_full_lows: list[int]) -> str | None:
    """Add the archived generations that continue ``chain`` (and its archive gap); returns a warning or None.

    :param chain: a chain of the catalog (its restorable sets).
    :param dest: the archive directory.
    :param later_full_lows: ``gen_low`` of the later full sets of the same database: generations a later
        full set holds may have been pruned from the archive on purpose (``certsrv prune --archive``).
    """
    fm, last = chain.full.manifest, chain.sets[-1]
    lm = last.manifest
    assert fm is not None and lm is not None
    if fm.database is None:
        return f"chain {chain.full.name}: the full set holds no database: the archive cannot continue it"
    high = max(s.manifest.gen_high for s in chain.sets if s.manifest is not None)
    try:
        ldir, checked, set_last = following(dest, fm.identity, chain.full.directory / fm.database, high,
                                            last.directory / DB_SUBDIR / logfile.log_name(lm.gen_high))
    except CertSrvError as e:
        return f"chain {chain.full.name}: the archive cannot continue it: {e.message}"
    reach = ArchiveReach(ldir)
    chain.archive = reach
    if checked is None:
        return None
    problem = continuity_error(checked, set_last) or checked.error
    if problem is None or problem is checked.error:
        reach.generations = list(checked.generations)
    if problem is None:
        return None
    after = reach.generations[-1].generation if reach.generations else high
    bad = after + 1
    files = logfile.list_generations(ldir)
    from_us = reach.end_us or chain.reach_us[-1]
    if problem.hresult == JET_ERR_MISSING_LOG_FILE and bad not in files:
        lo, hi = _missing(ldir, bad)
        if not any(g < bad for g in files) and hi is not None and any(lo < f <= hi + 1 for f in later_full_lows):
            # archive prune --before a later full set: that set replaces these generations (not a gap).
            return None
        gap = Gap(chain.full.name, logfile.log_name(after), str(ldir), lo, hi if hi is not None else lo,
                  from_us, None, archive=f"generation(s) {logfile.log_name(lo)}"
                  + (f"..{logfile.log_name(hi)}" if hi is not None and hi != lo else "")
                  + f" missing from the archive {ldir}")
    else:
        gap = Gap(chain.full.name, logfile.log_name(after), str(ldir), bad, bad, from_us, None,
                  archive=f"{problem.function}: {problem.message}")
    chain.archive_gap = gap
    return None


def summary(dest: Path, chains: list[Chain], now_us: int, max_age: timedelta) -> tuple[dict[str, Any], list[str]]:
    """The catalog's ``archive`` object and its warnings (freshness against ``max_age``)."""
    reaches = [c.archive for c in chains if c.archive is not None]
    gens = {(r.directory, g.generation) for r in reaches for g in r.generations}
    ends = [r.end_us for r in reaches if r.end_us is not None]
    newest = max(ends, default=None)
    age = None if newest is None else timedelta(microseconds=max(0, now_us - newest))
    info: dict[str, Any] = {
        "dest": str(dest), "generations": len(gens),
        "lineages": sorted({r.directory.name for r in reaches}),
        "newest_record": iso(newest), "newest_record_us": newest,
        "age_seconds": None if age is None else int(age.total_seconds()),
        "max_age_seconds": int(max_age.total_seconds()), "stale": age is not None and age > max_age,
        "gaps": [c.archive_gap.to_json() for c in chains if c.archive_gap is not None],
    }
    warnings: list[str] = []
    if newest is None:
        warnings.append(f"the archive {dest} holds no record after the sets: moments after the last set cannot "
                        "be restored from it; check that the CA archives there ([archive] dest)")
    elif age is not None and age > max_age:
        warnings.append(f"the newest archived record is {human(age)} old (limit {human(max_age)}): is the CA "
                        "still shipping? (certsrv status shows the archive's lag)")
    return info, warnings


def check_dest(dest: Path | str) -> Path:
    """The archive directory, absolute; refused when it does not exist."""
    d = Path(dest).absolute()
    if not d.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(d), "no such archive directory (--archive); give the [archive] "
                       "dest the CA ships to")
    return d


__all__ = ["DEFAULT_MAX_ARCHIVE_AGE", "ArchiveReach", "check_dest", "extend_chain", "summary"]
