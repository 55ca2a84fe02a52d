"""The recovery window's data: a backup set as the catalog sees it, a gap, the archive's reach, and a chain.

These are the records :mod:`pycertsrv.backupset.catalog` builds and :mod:`pycertsrv.backupset.catalog_archive`
extends; they live here so that neither of those imports the other's data back (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from ..archive.verify import ArchivedGeneration
from ..errors import CertSrvError
from ..store import logfile
from .manifest import Manifest
from .restore_plan import parse_until


def iso(us: int | None) -> str | None:
    """µs since the epoch as ISO 8601 UTC with microseconds (what ``--until`` reads back exactly)."""
    return None if us is None else logfile.us_to_datetime(us).astimezone(UTC).isoformat(timespec="microseconds")


def human(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s / 3600:.1f} hours"
    return f"{s} seconds"


@dataclass
class CatalogSet:
    """One set found under the directory, with the times its logs cover."""

    directory: Path
    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    start_us: int | None = None  # full set: the first moment it restores to
    first_record_us: int | None = None
    last_record_us: int | None = None
    has_key: bool = False
    authenticated: bool = False  # its authenticator was checked with the sets' password and matched

    @property
    def name(self) -> str:
        """The set's directory name."""
        return self.directory.name

    @property
    def ok(self) -> bool:
        """Whether the set passed verification."""
        return self.manifest is not None and not self.problems

    @property
    def kind(self) -> str:
        """``full``, ``incremental`` or ``unreadable``."""
        return self.manifest.kind if self.manifest is not None else "unreadable"

    @property
    def created_us(self) -> int | None:
        """The manifest's creation time (µs), None when unreadable."""
        if self.manifest is None:
            return None
        try:
            return parse_until(self.manifest.created)
        except CertSrvError:
            return None

    def to_json(self) -> dict[str, Any]:
        """The set as plain data."""
        m = self.manifest
        return {"name": self.name, "directory": str(self.directory), "kind": self.kind, "ok": self.ok,
                "problems": list(self.problems), "ca_name": m.ca_name if m else None,
                "identity": m.identity if m else None, "created": m.created if m else None,
                "gen_low": m.gen_low if m else None, "gen_high": m.gen_high if m else None,
                "snapshot_lsn": m.snapshot_lsn if m else None, "has_key": self.has_key,
                "authenticated": self.authenticated,
                "start": iso(self.start_us), "first_record": iso(self.first_record_us),
                "last_record": iso(self.last_record_us)}


@dataclass
class Gap:
    """Generations missing inside a chain: the sets after it are not restorable from that full set."""

    full: str
    after: str
    before: str
    gen_low: int
    gen_high: int
    from_us: int | None
    to_us: int | None
    spliced: bool = False  # no generation is missing, but the set names another one as the set it continues
    archive: str | None = None  # a gap in the log archive (what is missing or damaged there), not between sets

    @property
    def text(self) -> str:
        """The gap in words."""
        if self.archive is not None:
            return (f"archive gap: {self.archive} (after {self.after}): moments after {iso(self.from_us)} are not "
                    f"restorable from {self.full} with the archive")
        if self.spliced:
            return (f"{self.before} does not continue {self.after} (it names another set as its base: the sets "
                    f"come from different backup chains): sets from {self.before} on are not restorable from "
                    f"{self.full}")
        gens = logfile.log_name(self.gen_low) if self.gen_low == self.gen_high else \
            f"{logfile.log_name(self.gen_low)}..{logfile.log_name(self.gen_high)}"
        return (f"generation(s) {gens} missing between {self.after} and {self.before} (an incremental set is "
                f"missing): sets from {self.before} on are not restorable from {self.full}")

    def to_json(self) -> dict[str, Any]:
        """The gap as plain data."""
        return {"full": self.full, "after": self.after, "before": self.before, "gen_low": self.gen_low,
                "gen_high": self.gen_high, "from": iso(self.from_us), "to": iso(self.to_us),
                "from_us": self.from_us, "to_us": self.to_us, "spliced": self.spliced,
                "in_archive": self.archive is not None, "text": self.text}


@dataclass
class ArchiveReach:
    """The archived generations that continue one chain."""

    directory: Path  # DEST/<identity>/<lineage>
    generations: list[ArchivedGeneration] = field(default_factory=list)

    @property
    def end_us(self) -> int | None:
        """The time of the last archived record this chain reaches (None: no record)."""
        for g in reversed(self.generations):
            if g.last_ts_us is not None:
                return g.last_ts_us
        return None

    def to_json(self) -> dict[str, Any]:
        """The coverage as plain data."""
        gens = self.generations
        return {"directory": str(self.directory), "lineage": self.directory.name, "generations": len(gens),
                "first": logfile.log_name(gens[0].generation) if gens else None,
                "last": logfile.log_name(gens[-1].generation) if gens else None,
                "end": iso(self.end_us), "end_us": self.end_us}


@dataclass
class Chain:
    """A full set, the incrementals that chain onto it, and those cut off by a gap."""

    full: CatalogSet
    incrementals: list[CatalogSet] = field(default_factory=list)
    cut_off: list[CatalogSet] = field(default_factory=list)
    gap: Gap | None = None
    reach_us: list[int] = field(default_factory=list)  # per set of ``sets``: the latest moment restorable
    archive: ArchiveReach | None = None  # the archived generations that continue the sets (--archive)
    archive_gap: Gap | None = None  # where the archive stops continuing them

    @property
    def sets_end_us(self) -> int:
        """The last moment the sets alone restore to."""
        return self.reach_us[-1]

    @property
    def sets(self) -> list[CatalogSet]:
        """The restorable sets, full first."""
        return [self.full, *self.incrementals]

    @property
    def start_us(self) -> int:
        """The first moment this chain restores to."""
        assert self.full.start_us is not None
        return self.full.start_us

    @property
    def end_us(self) -> int:
        """The last moment this chain restores to (with the archive: its last record that continues the sets)."""
        a = self.archive.end_us if self.archive is not None else None
        return max(self.reach_us[-1], a) if a is not None else self.reach_us[-1]

    def needs_archive(self, at_us: int) -> bool:
        """Whether reaching ``at_us`` needs the archive (it is past the sets' last record)."""
        return self.archive is not None and at_us > self.sets_end_us

    def sets_for(self, at_us: int) -> list[CatalogSet]:
        """The full set and the incrementals needed to reach ``at_us`` (inside the chain's span)."""
        for i, reach in enumerate(self.reach_us):
            if reach >= at_us:
                return self.sets[: i + 1]
        return self.sets

    def to_json(self) -> dict[str, Any]:
        """The chain as plain data."""
        return {"full": self.full.name, "incrementals": [s.name for s in self.incrementals],
                "cut_off": [s.name for s in self.cut_off], "gap": self.gap.to_json() if self.gap else None,
                "start": iso(self.start_us), "end": iso(self.end_us), "start_us": self.start_us,
                "end_us": self.end_us, "sets_end_us": self.sets_end_us,
                "archive": self.archive.to_json() if self.archive is not None else None,
                "archive_gap": self.archive_gap.to_json() if self.archive_gap is not None else None,
                "steps": [{"set": s.name, "directory": str(s.directory), "reach": iso(r), "reach_us": r}
                          for s, r in zip(self.sets, self.reach_us, strict=True)]}
