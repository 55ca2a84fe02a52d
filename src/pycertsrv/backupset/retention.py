"""Scheduled backups and retention: where ``certsrv backup --into DIR`` puts a set, and ``certsrv prune``.

Sets are named by their time and type (``DIR/2026-11-29T060012Z-full/``, ``...-incr/``) so a
directory listing reads as a timeline; seconds keep two backups within one minute apart, and a
numeric suffix keeps two within one second apart. The catalog orders sets by their manifests,
never by these names. A second set in the same second gets ``.2`` before its type
(``2026-11-29T060012Z.2-incr``).

Pruning removes whole chains (:mod:`pycertsrv.backupset.catalog`): a full set together with every
incremental that chains onto it or follows it cut off by a gap. It keeps the newest ``N``
chains, so it never removes an incremental whose full set is kept, and never the newest chain.
Sets the catalog cannot place (unusable, or incrementals with no full set) are left alone and
reported. Within a chain the newest incremental goes first and the full set last, its manifest
before its files: a prune interrupted at any point leaves a full set and a prefix of its
incrementals, which still restore, and never a set that looks whole but is not.

With ``--archive DEST`` (issue 13's log archive) it also removes the archived generations the
oldest kept full set no longer needs: exactly ``certsrv archive prune DEST --before FULLSET``
(:mod:`pycertsrv.archive.prune`) for that set, planned before anything is deleted and run after
the sets (an interrupted prune leaves archived generations an older, deleted set needed: harmless).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..archive import prune as archive_prune
from ..archive.restore import set_lineage
from ..errors import E_INVALIDARG, InvalidArgument
from ..fsutil import fsync_dir
from .catalog import Catalog, CatalogSet, build_catalog, iso
from .manifest import manifest_path, read_manifest

SUFFIX = {"full": "full", "incremental": "incr"}


def set_name(kind: str, when: datetime | None = None) -> str:
    """``2026-11-29T060012Z-full`` / ``...-incr``: the set's time (UTC, to the second) and type."""
    t = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{t.strftime('%Y-%m-%dT%H%M%SZ')}-{SUFFIX[kind]}"


def new_set_dir(into: Path | str, kind: str, when: datetime | None = None) -> Path:
    """A new, not yet existing set directory under ``into`` named by :func:`set_name`.

    :param into: the backup directory.
    :param kind: ``full`` or ``incremental``.
    :param when: the set's time (default: now).
    """
    if kind not in SUFFIX:
        raise InvalidArgument(E_INVALIDARG, "backup", f"unknown backup kind {kind!r}")
    # Not created here: the writer makes it, after refusing a target inside the CA home.
    root = Path(into).absolute()
    name = set_name(kind, when)
    stamp, _, suffix = name.rpartition("-")
    n = 1
    while (root / name).exists():
        n += 1
        name = f"{stamp}.{n}-{suffix}"  # the counter goes before the type: every name ends in -full or -incr
    return root / name


@dataclass
class PrunePlan:
    """What a prune removes and keeps."""

    root: Path
    keep_full: int
    delete: list[CatalogSet] = field(default_factory=list)  # in deletion order
    keep: list[CatalogSet] = field(default_factory=list)
    untouched: list[CatalogSet] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    archive: archive_prune.PrunePlan | None = None  # --archive: the archived generations that go too

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        """The plan (and, after a real run, what went) as plain data."""
        return {"directory": str(self.root), "keep_full": self.keep_full, "dry_run": dry_run,
                "delete": [str(s.directory) for s in self.delete], "keep": [str(s.directory) for s in self.keep],
                "untouched": [{"directory": str(s.directory), "why": _why_untouched(s)} for s in self.untouched],
                "deleted": list(self.deleted),
                "archive": self.archive.to_json() if self.archive is not None else None}


def _why_untouched(s: CatalogSet) -> str:
    if not s.ok:
        return "unusable: " + (s.problems[0] if s.problems else "unreadable manifest")
    if s.kind not in ("full", "incremental"):
        return f"a {s.kind} set, not part of a chain"
    return "no full set to chain onto"


def plan_prune(root: Path | str, keep_full: int, catalog: Catalog | None = None, *,
               archive: Path | str | None = None) -> PrunePlan:
    """Work out which chains go: all but the newest ``keep_full`` (by the full set's snapshot time).

    :param root: the backup directory.
    :param keep_full: how many chains to keep (at least 1: the newest chain always stays).
    :param catalog: an already built catalog of ``root`` (default: build one).
    :param archive: the log archive: also plan ``archive prune --before`` the oldest kept full set.
    """
    if keep_full < 1:
        raise InvalidArgument(E_INVALIDARG, "--keep-full", f"{keep_full} would remove the newest chain; give 1 or more")
    cat = catalog or build_catalog(root)
    plan = PrunePlan(cat.root, keep_full)
    chains = sorted(cat.chains, key=lambda c: (c.start_us, c.full.name))
    old, kept = chains[:-keep_full], chains[-keep_full:]
    for c in kept:
        plan.keep += [*c.sets, *c.cut_off]
    for c in old:
        # Newest incremental first, the full set last (see the module docstring).
        plan.delete += [*sorted([*c.incrementals, *c.cut_off], key=_gen_low, reverse=True), c.full]
    placed = {s.directory for s in plan.keep + plan.delete}
    plan.untouched = [s for s in cat.sets if s.directory not in placed]
    if archive is not None:
        if not kept:
            raise InvalidArgument(E_INVALIDARG, "--archive", f"no usable full set under {cat.root}: the archive is "
                                  "left whole; take a full backup first")
        # Validate first: a set without an archive lineage refuses here, before any set is deleted.
        plan.archive = plan_archive_prune(archive, kept[0].full.directory)
    return plan


def _gen_low(s: CatalogSet) -> int:
    return s.manifest.gen_low if s.manifest is not None else 0


def run_prune(plan: PrunePlan) -> PrunePlan:
    """Delete the plan's sets, in its order; ``plan.deleted`` lists each directory once it is gone."""
    for s in plan.delete:
        # The manifest first: from then on the set reads as incomplete, never as whole.
        with contextlib.suppress(FileNotFoundError):
            manifest_path(s.directory).unlink()
        shutil.rmtree(s.directory)
        fsync_dir(plan.root)
        plan.deleted.append(str(s.directory))
    if plan.archive is not None:
        archive_prune.prune(plan.archive)
    return plan


def describe(plan: PrunePlan, dry_run: bool) -> list[str]:
    """The plan as text lines."""
    verb = "would delete" if dry_run else "deleted"
    done = plan.delete if dry_run else [s for s in plan.delete if str(s.directory) in plan.deleted]
    out = [f"{verb} {s.directory}  ({s.kind}, created {s.manifest.created if s.manifest else '?'})" for s in done]
    out += [f"keep {s.directory}  ({s.kind}, reaches from {iso(s.start_us) or iso(s.first_record_us)})"
            for s in plan.keep]
    out += [f"left alone {s.directory}: {_why_untouched(s)}" for s in plan.untouched]
    if plan.archive is not None:
        a = plan.archive
        out += [f"{verb} archived {p}" for p in a.files]
        out.append(f"archive {a.directory}: {len(a.files)} generation(s) before "
                   f"{a.before:08X} {'would go' if dry_run else 'removed'}")
    return out



def plan_archive_prune(dest: Path | str, full_set: Path | str) -> archive_prune.PrunePlan:
    """What ``certsrv archive prune DEST --before FULLSET`` removes: the archived generations of the set's CA and
    lineage that the full set and every later one no longer need (nothing is touched).

    :param dest: the archive directory.
    :param full_set: a full backup set (its identity, archive lineage and first generation).
    """
    dest = archive_prune.archive_dir(dest)
    full_set = Path(full_set)
    m = read_manifest(full_set)
    if m.kind != "full" or m.database is None:
        raise InvalidArgument(E_INVALIDARG, str(full_set), f"--before needs a full set, this one is {m.kind}")
    lineage = set_lineage(full_set / m.database)
    if lineage is None:
        raise InvalidArgument(E_INVALIDARG, str(full_set), "the set records no archive lineage: nothing is pruned "
                              "(take a full set with archiving on first)")
    return archive_prune.plan_prune(dest, m.identity, lineage, m.gen_low)


__all__ = ["PrunePlan", "describe", "new_set_dir", "plan_archive_prune", "plan_prune", "run_prune", "set_name"]
