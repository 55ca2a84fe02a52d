"""The recovery window: which moments a restore can reach from the backup sets under one directory.

``certsrv catalog DIR`` reads every set directly under ``DIR`` (each ``DataBase/certbkxp.dat``),
checks each with :func:`pycertsrv.backupset.verify.verify_backup`, and chains them the way
``certsrv restore`` does (:func:`pycertsrv.backupset.restore_plan.plan_restore`): one full set, then
incrementals of the same database identity ordered by ``gen_low``, each starting at most one
generation after the chain's highest (``gen_low <= high + 1``). A larger step is a gap: the sets
after it cannot be restored from that full set.

Times come from the log records themselves (each record carries its commit time, store.logfile):
- a chain starts at the full set's snapshot: the time of the record at ``snapshot_lsn`` (restore
  refuses an ``--until`` before it), or, when that record sits in an older generation not in the
  set, the header time of ``gen_low`` (created at the roll after that record);
- a chain reaches the time of the last record in its last contiguous set. Later than that, the
  CA may have written rows no set holds, so the window ends there.
A restore with ``--until T`` replays every record with a time <= T (restore.py: "stop before the
first record later than this"), so every T inside a chain's span gives the CA's state at T.

With ``--archive DEST`` (issue 13's continuous log archive), each chain reaches on through the
archived generations that continue it (:mod:`pycertsrv.backupset.catalog_archive`); without it the
JSON says ``"archive": null``.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import E_INVALIDARG, ERROR_DIRECTORY, ERROR_FILE_NOT_FOUND, CertSrvError, InvalidArgument, NotFound
from ..store import logfile
from .catalog_archive import DEFAULT_MAX_ARCHIVE_AGE, check_dest, extend_chain, summary
from .catalog_model import CatalogSet, Chain, Gap, human, iso
from .manifest import DB_SUBDIR, P12_EXT, manifest_path
from .restore_plan import parse_until
from .verify import verify_backup

DEFAULT_MAX_FULL_AGE = timedelta(days=8)
DEFAULT_MAX_INCREMENTAL_AGE = timedelta(hours=26)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, subject: str) -> timedelta:
    """``8d``, ``26h``, ``90m``, ``30s``, ``2w`` as a timedelta.

    :param text: the value.
    :param subject: the option, named in the error.
    """
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise InvalidArgument(E_INVALIDARG, subject, f"{text!r} is not a duration such as 8d, 26h or 90m")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class Catalog:
    """Everything ``certsrv catalog`` reports about one backup directory."""

    root: Path
    now_us: int
    sets: list[CatalogSet]
    chains: list[Chain]
    orphans: list[CatalogSet]  # valid incrementals with no valid full set to chain onto
    window: list[tuple[int, int]]  # merged restorable spans, oldest first
    holes: list[dict[str, Any]]  # the time between two spans, with why
    newest_full: CatalogSet | None
    newest_incremental: CatalogSet | None
    warnings: list[str]
    max_full_age: timedelta
    max_incremental_age: timedelta
    authenticity_checked: bool = False
    archive: dict[str, Any] | None = None  # with --archive: dest, generations covered, newest record, age

    def chain_for(self, at_us: int) -> Chain | None:
        """The chain that restores to ``at_us`` with the least replay: the newest full set covering it."""
        covering = [c for c in self.chains if c.start_us <= at_us <= c.end_us]
        return max(covering, key=lambda c: c.start_us) if covering else None

    def restore_command(self, at: str | int | datetime, *, restore_home: str = "NEW_HOME",
                        password_file: str = "PASSWORD_FILE") -> list[str]:
        """The exact ``certsrv restore`` argv that restores the CA as it was at ``at``.

        :param at: the moment (ISO 8601, µs since the epoch, or an aware datetime).
        :param restore_home: the (new, stopped) home to restore into.
        :param password_file: the sets' password file.
        """
        at_us = _moment(at)
        chain = self.chain_for(at_us)
        if chain is None:
            spans = ", ".join(f"{iso(a)} .. {iso(b)}" for a, b in self.window) or "none"
            raise InvalidArgument(E_INVALIDARG, "--at", f"{iso(at_us)} is outside the recovery window "
                                  f"({spans}); choose a moment inside it")
        argv = ["certsrv", "restore", *[str(s.directory) for s in chain.sets_for(at_us)], "--home", restore_home,
                "--password-file", password_file]  # the PKCS#12's password, and the key of the sets' authenticators
        if not chain.full.has_key:
            argv.append("--database-only")
        if chain.needs_archive(at_us) and self.archive is not None:
            argv += ["--archive", self.archive["dest"]]  # issue 13: replay the archived generations after the sets
        # spec §3.3: a point in time is replayed to exactly this moment (records later than it are left out).
        return [*argv, "--until", iso(at_us) or ""]

    def age(self, s: CatalogSet | None) -> timedelta | None:
        """How old a set is (now minus its manifest time)."""
        c = s.created_us if s is not None else None
        return None if c is None else timedelta(microseconds=self.now_us - c)

    def to_json(self, at: str | None = None, **cmd: str) -> dict[str, Any]:
        """The catalog as plain data (``--json``); with ``at``, the restore command for it.

        :param at: a moment to give the restore command for.
        :param cmd: ``restore_home`` / ``password_file`` for that command.
        """
        def age(s: CatalogSet | None) -> dict[str, Any] | None:
            a = self.age(s)
            return None if s is None or a is None else {"set": s.name, "created": s.manifest.created if s.manifest
                                                        else None, "age_seconds": int(a.total_seconds())}
        out: dict[str, Any] = {
            "directory": str(self.root), "now": iso(self.now_us),
            "sets": [s.to_json() for s in self.sets], "chains": [c.to_json() for c in self.chains],
            "orphans": [s.name for s in self.orphans],
            "window": [{"from": iso(a), "to": iso(b), "from_us": a, "to_us": b} for a, b in self.window],
            "holes": self.holes,
            "gaps": [g.to_json() for c in self.chains for g in (c.gap, c.archive_gap) if g is not None],
            "newest_full": age(self.newest_full), "newest_incremental": age(self.newest_incremental),
            "limits": {"max_full_age_seconds": int(self.max_full_age.total_seconds()),
                       "max_incremental_age_seconds": int(self.max_incremental_age.total_seconds())},
            "warnings": list(self.warnings), "archive": self.archive, "authenticity_checked": self.authenticity_checked,
        }
        if at is not None:
            argv = self.restore_command(at, **cmd)
            out["at"] = {"moment": iso(_moment(at)), "argv": argv, "command": shlex.join(argv)}
        return out

    def describe(self) -> list[str]:
        """The catalog as text lines."""
        out = [f"Backup sets in {self.root}: {len(self.sets)}"]
        for c in self.chains:
            out.append(f"chain {c.full.name}: {iso(c.start_us)} .. {iso(c.end_us)}")
            for s, r in zip(c.sets, c.reach_us, strict=True):
                m = s.manifest
                assert m is not None
                out.append(_reach_line(s.kind, s.name, m.gen_low, m.gen_high, r))
            if c.gap is not None:
                out.append(f"  GAP: {c.gap.text}")
            for s in c.cut_off:
                out.append(f"  not restorable: {s.name} (after the gap)")
            if c.archive is not None and c.archive.generations:
                ar = c.archive
                out.append(_reach_line("archive", str(ar.directory), ar.generations[0].generation,
                                       ar.generations[-1].generation, ar.end_us))
            if c.archive_gap is not None:
                out.append(f"  GAP: {c.archive_gap.text}")
        for s in self.orphans:
            out.append(f"not restorable: {s.name} (no full set to chain onto)")
        for s in self.sets:
            if not s.ok:
                out.append(f"unusable: {s.name}: {s.problems[0] if s.problems else 'unreadable'}")
        out.append("recovery window:" + ("" if self.window else " none (no restorable full set)"))
        for a, b in self.window:
            out.append(f"  {iso(a)} .. {iso(b)}")
        for h in self.holes:
            out.append(f"  hole {h['from']} .. {h['to']}: {h['why']}")
        for label, newest in (("full", self.newest_full), ("incremental", self.newest_incremental)):
            old = self.age(newest)
            if newest is not None and old is not None:
                out.append(f"newest {label} set: {newest.name}, {human(old)} old")
        if self.archive is not None:
            ai = self.archive
            out.append(f"archive {ai['dest']}: {ai['generations']} generation(s) continue the sets, newest record "
                       f"{ai['newest_record'] or 'none'}"
                       + (f", {human(timedelta(seconds=ai['age_seconds']))} old" if ai["age_seconds"] is not None
                          else ""))
        out.extend(f"WARNING: {w}" for w in self.warnings)
        return out


def _reach_line(kind: str, name: str, gen_low: int, gen_high: int, reach_us: int | None) -> str:
    """One line of :meth:`Catalog.describe` for a set or an archive: what it holds and how far it reaches."""
    return f"  {kind:<11} {name}  generations {gen_low:08X}..{gen_high:08X}  reaches {iso(reach_us)}"


def _moment(at: str | int | datetime) -> int:
    if isinstance(at, int):
        return at
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise InvalidArgument(E_INVALIDARG, "--at", "the time must be timezone-aware")
        return int(at.timestamp() * 1_000_000)
    try:
        return parse_until(at)
    except CertSrvError:
        raise InvalidArgument(E_INVALIDARG, "--at", f"{at!r} is not an ISO 8601 time") from None


def _log_times(s: CatalogSet) -> None:
    """Fill in the set's record times (and, for a full set, its first restorable moment) from its logs."""
    m = s.manifest
    assert m is not None
    ident = bytes.fromhex(m.identity)
    snap = m.snapshot_lsn
    for g in range(m.gen_low, m.gen_high + 1):
        path = s.directory / DB_SUBDIR / logfile.log_name(g)
        res, recs = logfile.scan(path, ident, keep=True)
        if g == m.gen_low and m.kind == "full":
            # The header is written at the roll that followed the snapshot's record, when that record
            # is not in this generation (store.sqlite.snapshot: gen_low = generation of snapshot_lsn + 1).
            s.start_us = res.header.created_us
        for r in recs:
            if s.first_record_us is None:
                s.first_record_us = r.ts_us
            s.last_record_us = r.ts_us if s.last_record_us is None else max(s.last_record_us, r.ts_us)
            if m.kind == "full" and snap and r.lsn == snap:
                # restore._check_until: an --until before this record's time is refused.
                s.start_us = r.ts_us


def read_set(directory: Path, password: bytes | None = None) -> CatalogSet:
    """Read and verify one set; problems are recorded, never raised.

    :param directory: the set.
    :param password: the sets' password: checks the set's authenticator (without it, the structure only).
    """
    rep = verify_backup(directory, password)
    s = CatalogSet(directory=Path(directory).absolute(), manifest=rep.manifest,
                   problems=[str(p) for p in rep.problems], authenticated=rep.authenticated)
    # The PKCS#12 the manifest lists (role "key"), never a file someone put beside the set.
    s.has_key = rep.manifest is not None and any(f.path.lower().endswith(P12_EXT)
                                                 for f in rep.manifest.files_by_role("key"))
    if s.ok and s.kind in ("full", "incremental"):
        try:
            _log_times(s)
        except CertSrvError as e:
            s.problems.append(f"{e.function}: {e.message}")
    return s


def find_sets(root: Path) -> list[Path]:
    """The set directories directly under ``root`` (those with a ``DataBase/`` directory), by name."""
    if not root.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND if not root.exists() else ERROR_DIRECTORY, str(root),
                       "no such backup directory; give the directory that holds the sets")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / DB_SUBDIR).is_dir())


def _chain(full: CatalogSet, incs: list[CatalogSet]) -> Chain:
    """restore._order_sets' rule: sorted by gen_low, each set's gen_low <= the chain's high + 1."""
    assert full.manifest is not None and full.start_us is not None
    chain = Chain(full=full)
    high = full.manifest.gen_high
    reach = max(full.start_us, full.last_record_us or full.start_us)
    chain.reach_us.append(reach)
    prev = full
    for s in sorted(incs, key=lambda x: (x.manifest.gen_low if x.manifest else 0, x.name)):
        m = s.manifest
        assert m is not None
        if chain.gap is not None:
            chain.cut_off.append(s)
            continue
        if m.gen_low > high + 1:
            chain.gap = Gap(full.name, prev.name, s.name, high + 1, m.gen_low - 1, reach, s.first_record_us)
            chain.cut_off.append(s)
            continue
        if not _continues(prev, s):
            # setcheck.check_chain: restore refuses an incremental that names another set as the one it continues.
            chain.gap = Gap(full.name, prev.name, s.name, m.gen_low, m.gen_low - 1, reach, s.first_record_us,
                            spliced=True)
            chain.cut_off.append(s)
            continue
        chain.incrementals.append(s)
        high = max(high, m.gen_high)
        reach = max(reach, s.last_record_us or reach)
        chain.reach_us.append(reach)
        prev = s
    return chain


def _continues(prev: CatalogSet, s: CatalogSet) -> bool:
    """Whether ``s`` names ``prev`` as the set it continues (its ``base``, under its authenticator)."""
    m, pm = s.manifest, prev.manifest
    assert m is not None and pm is not None
    if m.auth is None or pm.auth is None:
        return True  # sets from before authenticated sets carry no link
    b = m.base or {}
    return bool(b.get("set_id") == pm.set_id and b.get("mac") == pm.mac)


def build_catalog(root: Path | str, *, now: datetime | None = None, password: bytes | None = None,
                  max_full_age: timedelta = DEFAULT_MAX_FULL_AGE,
                  max_incremental_age: timedelta = DEFAULT_MAX_INCREMENTAL_AGE, archive: Path | str | None = None,
                  max_archive_age: timedelta = DEFAULT_MAX_ARCHIVE_AGE) -> Catalog:
    """Read, verify and chain every set under ``root``; compute the recovery window.

    :param root: the backup directory (``certsrv backup --into`` writes sets under it).
    :param now: the time ages are measured against (default: now).
    :param password: the sets' password: every authenticator is checked (without it, the structure only).
    :param max_full_age: warn when the newest full set is older.
    :param max_incremental_age: warn when the newest incremental set is older.
    :param archive: the continuous log archive (issue 13): chains reach on through its generations.
    :param max_archive_age: warn when the newest archived record that continues the sets is older.
    """
    root = Path(root).absolute()
    dest = check_dest(archive) if archive is not None else None  # validate first
    now_us = int((now or datetime.now(UTC)).timestamp() * 1_000_000)
    sets = [read_set(p, password) for p in find_sets(root)]
    good = [s for s in sets if s.ok]
    fulls = sorted((s for s in good if s.kind == "full"), key=lambda s: (s.manifest.gen_low if s.manifest else 0,
                                                                          s.start_us or 0, s.name))
    by_full: dict[str, list[CatalogSet]] = {f.name: [] for f in fulls}
    orphans: list[CatalogSet] = []
    for s in good:
        if s.kind != "incremental":
            continue
        m = s.manifest
        assert m is not None
        # An incremental follows the newest full set of its database that starts at or before it.
        owners = [f for f in fulls if f.manifest is not None and f.manifest.identity == m.identity
                  and f.manifest.gen_low <= m.gen_low]
        if owners:
            by_full[owners[-1].name].append(s)
        else:
            orphans.append(s)
    chains = [_chain(f, by_full[f.name]) for f in fulls]
    archive_info, archive_warnings = None, []
    if dest is not None:
        for c in chains:
            later = [f.manifest.gen_low for f in fulls if f.manifest is not None and c.full.manifest is not None
                     and f.manifest.identity == c.full.manifest.identity and f.start_us is not None
                     and f.start_us > c.start_us]
            w = extend_chain(c, dest, later)
            if w is not None:
                archive_warnings.append(w)
        archive_info, more = summary(dest, chains, now_us, max_archive_age)
        archive_warnings += more
    window, holes = _window(chains)
    newest_full = max(fulls, key=lambda s: s.created_us or 0, default=None)
    incs = [s for s in good if s.kind == "incremental"]
    newest_inc = max(incs, key=lambda s: s.created_us or 0, default=None)
    cat = Catalog(root, now_us, sets, chains, orphans, window, holes, newest_full, newest_inc, [],
                  max_full_age, max_incremental_age, password is not None, archive_info)
    cat.warnings = _warnings(cat) + archive_warnings
    return cat


def _window(chains: list[Chain]) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    spans = sorted((c.start_us, c.end_us) for c in chains)
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    holes: list[dict[str, Any]] = []
    for (_, b), (a2, _) in itertools.pairwise(merged):
        why = [g.text for c in chains for g in (c.archive_gap, c.gap) if g is not None and c.end_us == b]
        holes.append({"from": iso(b), "to": iso(a2), "from_us": b, "to_us": a2,
                      "why": "; ".join(why) or "no set covers this time (no incremental between the full sets)"})
    return merged, holes


def _warnings(cat: Catalog) -> list[str]:
    out: list[str] = []
    if not cat.authenticity_checked and cat.sets:
        out.append("authenticity not checked (no password given): a set changed on the backup storage would look "
                   "whole here; give --password-file")
    for kind, newest, limit, none in (
            ("full", cat.newest_full, cat.max_full_age, "no usable full set: nothing can be restored"),
            ("incremental", cat.newest_incremental, cat.max_incremental_age,
             "no incremental set: moments after the newest full set cannot be restored")):
        if newest is None:
            out.append(none)
            continue
        a = cat.age(newest)
        if a is not None and a > limit:
            out.append(f"the newest {kind} set {newest.name} is {human(a)} old "
                       f"(limit {human(limit)}): take {'a' if kind == 'full' else 'an'} {kind} backup")
    for c in cat.chains:
        out.extend(g.text for g in (c.gap, c.archive_gap) if g is not None)
    for s in cat.orphans:
        out.append(f"{s.name} is not restorable: no full set of its database precedes it")
    for s in cat.sets:
        if not s.ok:
            out.append(f"{s.name} is unusable: {s.problems[0] if s.problems else 'unreadable manifest'}")
    return out


__all__ = ["DEFAULT_MAX_ARCHIVE_AGE", "DEFAULT_MAX_FULL_AGE", "DEFAULT_MAX_INCREMENTAL_AGE", "Catalog", "CatalogSet",
           "Chain", "Gap",
           "build_catalog", "find_sets", "iso", "manifest_path", "parse_duration", "read_set"]
