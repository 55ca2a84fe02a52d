"""``certsrv archive prune DEST --before FULLSET`` (issue 13): drop what a full set makes unneeded.

A full set holds its snapshot and the generations from its ``gen_low``: every archived generation
of its CA and lineage below ``gen_low`` is needed by no restore from this set or any later one.
Other lineages (histories before a restore) are left alone: older sets may still need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ERROR_FILE_NOT_FOUND, NotFound
from ..fsutil import fsync_dir
from ..store import logfile


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


def archive_dir(dest: Path | str) -> Path:
    """The archive directory ``dest``, which must exist."""
    dest = Path(dest)
    if not dest.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(dest), "no such archive directory")
    return dest


def plan_prune(dest: Path | str, identity: str, lineage: str, before: int) -> PrunePlan:
    """What :func:`prune` would remove (nothing is touched): the generations of one CA's lineage below ``before``.

    :param dest: the archive directory.
    :param identity: the CA database's identity.
    :param lineage: the archive lineage (see :func:`pycertsrv.archive.restore.set_lineage`).
    :param before: the first generation still needed (a full set's ``gen_low``).
    """
    ldir = archive_dir(dest) / identity / lineage
    plan = PrunePlan(ldir, before)
    plan.files = [p for g, p in logfile.list_generations(ldir).items() if g < before]
    return plan


def prune(plan: PrunePlan) -> PrunePlan:
    """Remove the planned files (archived files are read-only: removal needs only the directory)."""
    for p in plan.files:
        p.unlink(missing_ok=True)
    if plan.files:
        fsync_dir(plan.directory)
    plan.done = True
    return plan


__all__ = ["PrunePlan", "archive_dir", "plan_prune", "prune"]
