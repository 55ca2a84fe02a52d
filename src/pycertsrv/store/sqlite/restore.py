"""A registered restore, acted on when the store opens (spec §3.3): hard recovery onto a temp copy, then finish.

:func:`recover_registered` runs first in :meth:`Store.open`. On a completed registration it replays the
registered generations (phase I) and the contiguous newer live ones (phase II) onto a temp copy of the restored
database, appends the epilogue record, and writes the :class:`RecoveryPlan` into the registration (state
``recovering``); :func:`_finish` then carries the plan out with idempotent steps, so a crash at any point is
finished at the next start.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...errors import (
    E_FAIL,
    ERROR_DIRECTORY,
    ERROR_FILE_NOT_FOUND,
    JET_ERR_ENDING_RESTORE_LOG_TOO_LOW,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CertSrvError,
    CorruptData,
    NotFound,
    SequenceError,
)
from ...fsutil import atomic_write, copy_file, fsync_dir, fsync_file, make_dirs
from ...home import Home
from .. import archivemark, logfile, schema
from ..registration import (
    SETTING_LAST_RECOVERY,
    SETTING_REQUIRES_FULL,
    STATE_COMPLETE,
    STATE_RECOVERING,
    Registration,
    clear_registration,
    mark_failed,
    read_registration,
    rebase_path,
    refuse_if_unfinished,
    resolve_db_target,
    stamp,
    write_registration,
)
from .checkpoint import Checkpoint, write_checkpoint
from .dbfile import SIDE_SUFFIXES, connect_plain, database_files, recovering_file, side_file
from .recovery import hard_recover
from .replay import Op, RecoveryReport, apply_ops, encode_payload, read_meta, set_applied


@dataclass(frozen=True)
class RecoveryPlan:
    """What finishing a recovered restore does (kept in the registration, so a crash finishes it at restart).

    :param target: the database file the recovered copy replaces.
    :param temp: the recovered copy (renamed onto ``target``).
    :param identity: the database identity (hex).
    :param applied_lsn: the recovered database's LSN (the epilogue record's).
    :param generation: the fresh generation that holds the epilogue record.
    :param generation_created_us: its header's time.
    :param record: the epilogue record's bytes (frame included).
    :param supersede: live generations that conflict with the recovered history, moved aside.
    :param supersede_dir: where they go (``superseded-<time>`` in the log and database directories).
    :param torn: kept generations ending in a torn tail: name -> the offset to cut at.
    :param trim: kept generations with preallocated room: name -> the offset to cut at.
    :param db_supersede: other database files in the database directory, moved aside.
    :param report: what the replay did.
    :param recovered_at: when (ISO 8601).
    :param backup_log_paths: the registered sets' log directories (removed when inside ``HOME/restore``).
    """

    target: str
    temp: str
    identity: str
    applied_lsn: int
    generation: int
    generation_created_us: int
    record: bytes
    supersede: list[str]
    supersede_dir: str
    torn: dict[str, int]
    trim: dict[str, int]
    db_supersede: list[str]
    report: RecoveryReport
    recovered_at: str
    backup_log_paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """As plain data (the registration's ``recovery``)."""
        d = asdict(self)
        d["record"] = base64.b64encode(self.record).decode("ascii")
        d["report"] = self.report.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecoveryPlan:
        """The plan written by :meth:`to_json` (``trim`` and ``backup_log_paths`` may be absent: older plans)."""
        return cls(target=str(d["target"]), temp=str(d["temp"]), identity=str(d["identity"]),
                   applied_lsn=int(d["applied_lsn"]), generation=int(d["generation"]),
                   generation_created_us=int(d["generation_created_us"]), record=base64.b64decode(d["record"]),
                   supersede=[str(x) for x in d["supersede"]], supersede_dir=str(d["supersede_dir"]),
                   torn={str(k): int(v) for k, v in d["torn"].items()},
                   trim={str(k): int(v) for k, v in d.get("trim", {}).items()},
                   db_supersede=[str(x) for x in d["db_supersede"]], report=RecoveryReport(**d["report"]),
                   recovered_at=str(d["recovered_at"]),
                   backup_log_paths=[str(x) for x in d.get("backup_log_paths", [])])


@dataclass
class RestoreOutcome:
    """What the start-time hard recovery did."""

    report: RecoveryReport
    applied_lsn: int
    generation: int
    superseded: list[str]
    superseded_dir: str | None
    database: str

    def summary(self) -> str:
        """One line for logs and the CLI."""
        s = f"restore: {self.report.summary()}; database at LSN {self.applied_lsn}, new generation " \
            f"{self.generation:08X}"
        if self.superseded:
            s += f"; {len(self.superseded)} conflicting generation(s) moved to {self.superseded_dir}"
        return s

    def to_json(self) -> dict[str, Any]:
        """The outcome as plain data."""
        d = asdict(self)
        d["report"] = self.report.to_json()
        return d


def recover_registered(home: Path) -> RestoreOutcome | None:
    """The hook :meth:`Store._open` runs first: act on a registered restore, if any.

    Refuses (raises) on an uncompleted or failed registration; runs hard recovery on a
    completed one; finishes an interrupted one. Returns None when nothing is registered.

    :param home: the CA home (its lock is held by the caller).
    """
    home = Path(home)
    reg = read_registration(home)
    if reg is None:
        return None
    refuse_if_unfinished(home, reg)
    if reg.state == STATE_COMPLETE:
        try:
            reg.recovery = recover_into_temp(home, reg).to_json()
        except CertSrvError as e:
            _discard_temp(home, reg)
            mark_failed(home, e.hresult, str(e))
            raise
        except (OSError, sqlite3.Error, ValueError) as e:  # sqlite3.Error: the restored file is not a database
            _discard_temp(home, reg)
            mark_failed(home, E_FAIL, f"hard recovery failed: {e}")
            raise CertSrvError(E_FAIL, str(home), f"hard recovery failed: {e}") from e
        reg.state = STATE_RECOVERING
        write_registration(home, reg)
    return _finish(home, reg)


def _discard_temp(home: Path, reg: Registration) -> None:
    if not reg.restore_map:
        return
    with contextlib.suppress(CertSrvError, OSError):
        tmp = recovering_file(resolve_db_target(home, rebase_path(reg, home, reg.restore_map[0][1])))
        for p in (tmp, side_file(tmp, "-journal")):
            p.unlink(missing_ok=True)


def _collect_generations(reg: Registration, home: Path) -> list[Path]:
    """Files of genLow..genHigh across every registered backup log path; a missing one is named."""
    found: dict[int, Path] = {}
    dirs: list[str] = []
    for s in reg.sets:
        d = s.backup_log_path or reg.backup_log_path
        if d is None:
            continue
        d = rebase_path(reg, home, d)
        if d in dirs:
            continue
        dirs.append(d)
        for g, p in logfile.list_generations(Path(d)).items():
            found.setdefault(g, p)
    files: list[Path] = []
    for g in range(reg.gen_low, reg.gen_high + 1):
        if g not in found:
            raise CorruptData(JET_ERR_MISSING_RESTORE_LOG_FILES, logfile.log_name(g),
                              f"log generation {g:08X} is missing from the backup log path "
                              f"({', '.join(dirs)}); registered {reg.gen_low:08X}..{reg.gen_high:08X}")
        files.append(found[g])
    return files


@dataclass
class _LiveGen:
    generation: int
    path: Path
    first: int
    last: int
    end: int
    size: int
    ok: bool  # identity matches and no bad frame except a torn tail
    torn: bool


def _scan_live(path: Path, gen: int, ident: bytes) -> _LiveGen:
    try:
        res, _ = logfile.scan(path, ident)
    except CertSrvError:
        return _LiveGen(gen, path, 0, 0, 0, 0, False, False)
    first = res.header.first_lsn
    last = res.last_lsn if res.last_lsn is not None else first - 1
    bad = res.bad_offset is not None
    return _LiveGen(gen, path, first, last, res.end, res.size, not bad or res.bad_is_tail, bad and res.bad_is_tail)


def _epilogue_record(lsn: int, when: datetime, generation: int) -> tuple[bytes, list[Op]]:
    """The record the recovery appends: DBLastRecovery, backup_requires_full and a new archive lineage
    starting at ``generation`` (issue 13: the restored history never mixes with the one it branched from)."""
    t = schema.table("setting")
    ops: list[Op] = [
        ("setting", "p", schema.row_to_image(t, {"name": SETTING_LAST_RECOVERY, "value": when.isoformat()})),
        ("setting", "p", schema.row_to_image(t, {"name": SETTING_REQUIRES_FULL, "value": "1"})),
        ("setting", "p", schema.row_to_image(t, {"name": archivemark.SETTING_LINEAGE,
                                                 "value": archivemark.new_lineage()})),
        ("setting", "p", schema.row_to_image(t, {"name": archivemark.SETTING_LINEAGE_START,
                                                 "value": str(generation)})),
    ]
    return logfile.encode_record(lsn, int(when.timestamp() * 1_000_000), encode_payload(ops)), ops


def recover_into_temp(home: Path, reg: Registration) -> RecoveryPlan:
    """Phases I and II plus the epilogue on a temp copy of the database; returns the finishing plan."""
    if not reg.restore_map or not reg.has_full:
        raise SequenceError(ERROR_DIRECTORY, str(home), "no full set is registered (the restore map is empty)")
    target = resolve_db_target(home, rebase_path(reg, home, reg.restore_map[0][1]))
    if not target.is_file():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(target), "the restored database file is missing")
    files = _collect_generations(reg, home)
    tmp = recovering_file(target)
    for p in (tmp, side_file(tmp, "-journal")):
        p.unlink(missing_ok=True)
    copy_file(target, tmp)
    conn = connect_plain(tmp)
    try:
        meta = read_meta(conn)
    finally:
        conn.close()
    ident_hex = meta["identity"]
    if reg.identity is not None and reg.identity != ident_hex:
        raise CorruptData(JET_ERR_MISSING_RESTORE_LOG_FILES, target.name,
                          f"database belongs to {ident_hex}, the registered sets to {reg.identity}")
    ident = bytes.fromhex(ident_hex)
    snapshot_lsn = int(meta["applied_lsn"])
    # Phase I's end: the last LSN the backed-up generations hold.
    last_res, _ = logfile.scan(files[-1], ident)
    if last_res.bad_offset is not None:
        raise logfile.corrupt_error(last_res)
    phase1_end = last_res.last_lsn if last_res.last_lsn is not None else last_res.header.first_lsn - 1
    if phase1_end < snapshot_lsn:
        raise CorruptData(JET_ERR_ENDING_RESTORE_LOG_TOO_LOW, files[-1].name,
                          f"the logs end at LSN {phase1_end}, before the database's LSN {snapshot_lsn}")
    # Phase II: contiguous newer generations of the live log directory (spec §3.3, ESE phase II).
    log_dir = Home(Path(home)).log_dir
    live = logfile.list_generations(log_dir)
    extras: list[Path] = []
    expected = phase1_end + 1
    g = reg.gen_high + 1
    while g in live:
        info = _scan_live(live[g], g, ident)
        if not info.ok or info.first != expected:
            break
        extras.append(live[g])
        expected = info.last + 1
        g += 1
        if info.torn:
            break  # only the last file may end in a torn tail
    rep = hard_recover(tmp, files[0].parent, reg.gen_low, reg.gen_low, identity=ident_hex,
                       until_us=reg.until_us, extra_generations=files[1:] + extras)
    applied = rep.to_lsn
    chain = files + extras
    if rep.stopped_at is not None and rep.generations:
        g_end = rep.generations[-1]
    else:
        g_end = logfile.read_header(chain[-1]).generation
    # Which live generations agree with the recovered LSN sequence: a contiguous run ending exactly at
    # `applied`. Everything else conflicts (e.g. records past --until, another CA) and is moved aside.
    infos = {gen: _scan_live(p, gen, ident) for gen, p in live.items()}
    consistent = {gen for gen, i in infos.items() if i.ok and i.first <= applied + 1 and i.last <= applied}
    keep: list[int] = []
    if consistent:
        top = max(consistent)
        if infos[top].last == applied:
            keep = [top]
            cur = top
            while cur - 1 in consistent and infos[cur - 1].last + 1 == infos[cur].first:
                cur -= 1
                keep.append(cur)
    supersede = sorted(live[gen].name for gen in live if gen not in keep)
    torn = {live[gen].name: infos[gen].end for gen in keep if infos[gen].torn}
    # Kept generations that were being written end in preallocated room: they are closed now, cut to size.
    trim = {live[gen].name: infos[gen].end for gen in keep if not infos[gen].torn and infos[gen].size > infos[gen].end}
    fresh = (max(keep) if keep else g_end) + 1
    # The epilogue: one logged record at applied+1, in the fresh generation.
    when = datetime.now(UTC)
    record, ops = _epilogue_record(applied + 1, when, fresh)
    conn = connect_plain(tmp)
    try:
        conn.execute("BEGIN")
        apply_ops(conn, ops)
        set_applied(conn, applied + 1)
        conn.commit()
    finally:
        conn.close()
    fsync_file(tmp)
    fsync_dir(tmp.parent)
    others = sorted(p.name for p in database_files(target.parent) if p != target)
    return RecoveryPlan(
        target=str(target), temp=str(tmp), identity=ident_hex, applied_lsn=applied + 1, generation=fresh,
        generation_created_us=int(when.timestamp() * 1_000_000), record=record, supersede=supersede,
        supersede_dir=f"superseded-{stamp()}", torn=torn, trim=trim, db_supersede=others, report=rep,
        recovered_at=when.isoformat(),
        backup_log_paths=sorted({rebase_path(reg, home, s.backup_log_path) for s in reg.sets if s.backup_log_path}))


def _move(src: Path, dest_dir: Path) -> None:
    make_dirs(dest_dir)
    os.replace(src, dest_dir / src.name)


def _finish(home: Path, reg: Registration) -> RestoreOutcome:
    """The idempotent steps after the recovered copy is durable (safe to repeat after a crash)."""
    assert reg.recovery is not None
    plan = RecoveryPlan.from_json(reg.recovery)
    home = Path(home)
    layout = Home(home)
    target = Path(plan.target)
    tmp = Path(plan.temp)
    db_dir = target.parent
    log_dir = layout.log_dir
    make_dirs(log_dir)
    db_aside = db_dir / plan.supersede_dir
    if tmp.exists():
        # Stale WAL/SHM/journal beside the target belong to the file being replaced; SQLite would apply
        # a stale WAL to the new file, so they must go before the rename.
        for suffix in SIDE_SUFFIXES:
            side = side_file(target, suffix)
            if side.exists():
                _move(side, db_aside)
        os.replace(tmp, target)
        fsync_dir(db_dir)
    elif not target.exists():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(target), "the recovered database file is missing")
    for name in plan.db_supersede:
        for suffix in ("", *SIDE_SUFFIXES):
            p = db_dir / (name + suffix)
            if p.exists():
                _move(p, db_aside)
    if db_aside.exists():
        fsync_dir(db_dir)
    aside = log_dir / plan.supersede_dir
    for name in plan.supersede:
        p = log_dir / name
        if p.exists():
            _move(p, aside)
    for name, end in plan.torn.items():
        p = log_dir / name
        if p.exists() and p.stat().st_size > end:
            # The torn bytes were never committed; keep a copy anyway (nothing is deleted), then cut.
            make_dirs(aside)
            if not (aside / name).exists():
                copy_file(p, aside / name)
            os.chmod(p, 0o600)
            fd = os.open(p, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)
                os.fsync(fd)
            finally:
                os.close(fd)
    for name, end in plan.trim.items():
        p = log_dir / name
        if p.exists() and p.stat().st_size > end:
            os.chmod(p, 0o600)
            fd = os.open(p, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)  # only zeroes of the preallocation go
                os.fsync(fd)
            finally:
                os.close(fd)
    if aside.exists():
        fsync_dir(aside)
    gen = plan.generation
    applied = plan.applied_lsn
    header = logfile.LogHeader(gen, bytes.fromhex(plan.identity), plan.generation_created_us, applied)
    atomic_write(log_dir / logfile.log_name(gen), header.encode() + plan.record)
    write_checkpoint(layout.checkpoint, Checkpoint(applied, gen, logfile.now_us()), plan.identity)
    outcome = RestoreOutcome(report=plan.report, applied_lsn=applied, generation=gen,
                             superseded=list(plan.supersede),
                             superseded_dir=str(aside) if plan.supersede else None, database=str(target))
    done = reg.to_json()
    done["outcome"] = outcome.to_json()
    atomic_write(layout.last_restore, json.dumps(done, indent=1, sort_keys=True).encode(),
                 mode=0o600)
    clear_registration(home)
    # The backup log path copies are ours only inside HOME/restore; anything else belongs to the operator.
    restore_root = layout.restore_dir.resolve()
    for d in plan.backup_log_paths:
        p = Path(d).resolve()
        if p.is_dir() and (p == restore_root or restore_root in p.parents):
            shutil.rmtree(p, ignore_errors=True)
    return outcome

