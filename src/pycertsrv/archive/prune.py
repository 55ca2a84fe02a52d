"""``certsrv archive prune DEST --before FULLSET`` (issue 13): drop what a full set makes unneeded.

A full set holds its snapshot and the generations from its ``gen_low``: every archived generation
of its CA and lineage below ``gen_low`` is needed by no restore from this set or any later one.
Other lineages (histories before a restore) are left alone: older sets may still need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backupset.manifest import read_manifest
from ..errors import E_INVALIDARG, ERROR_FILE_NOT_FOUND, InvalidArgument, NotFound
from ..fsutil import fsync_dir
from ..store import logfile
from .restore import set_lineage


@dataclass
class PrunePlan:
    """The files a prune removes (or removed)."""

    directory: Path
    before: int
    files: list[Path] = field(default_factory=list)
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data."""
        return {"directory": str(self.directory), "before": logfile.log_name(self.before),
                "files": [str(p) for p in self.files], "count": len(self.files), "removed": self.done}


def plan_prune(dest: Path | str, full_set: Path | str) -> PrunePlan:
    """What :func:`prune` would remove (nothing is touched)."""
    dest, full_set = Path(dest), Path(full_set)
    if not dest.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(dest), "no such archive directory")
    m = read_manifest(full_set)
    if m.kind != "full" or m.database is None:
        raise InvalidArgument(E_INVALIDARG, str(full_set), f"--before needs a full set, this one is {m.kind}")
    lineage = set_lineage(full_set / m.database)
    if lineage is None:
        raise InvalidArgument(E_INVALIDARG, str(full_set), "the set records no archive lineage: nothing is pruned "
                              "(take a full set with archiving on first)")
    ldir = dest / m.identity / lineage
    plan = PrunePlan(ldir, m.gen_low)
    plan.files = [p for g, p in logfile.list_generations(ldir).items() if g < m.gen_low]
    return plan


def prune(plan: PrunePlan) -> PrunePlan:
    """Remove the planned files (archived files are read-only: removal needs only the directory)."""
    for p in plan.files:
        p.unlink(missing_ok=True)
    if plan.files:
        fsync_dir(plan.directory)
    plan.done = True
    return plan


__all__ = ["PrunePlan", "plan_prune", "prune"]
