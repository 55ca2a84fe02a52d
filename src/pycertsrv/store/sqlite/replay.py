"""Replaying log records onto SQLite: the shared core of soft (crash) and hard (restore) recovery."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ...errors import (
    JET_ERR_BAD_LOG_SIGNATURE,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_MISSING_LOG_FILE,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    JET_ERR_RESTORE_OF_NON_BACKUP_DATABASE,
    JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH,
    CorruptData,
)
from .. import logfile
from ..batcher import RowBatcher
from ..health import disk_full_error
from ..logfile import Op, decode_payload, encode_payload
from ..report import RecoveryReport
from ..schema import TABLES
from .dbfile import is_disk_full
from .ddl import delete_sql, upsert_sql

__all__ = ["BATCH", "Batcher", "Op", "RecoveryReport", "apply_ops", "check_chain", "decode_payload",
           "encode_payload", "read_meta", "replay", "set_applied"]

BATCH = 5000  # records per SQLite transaction during replay

# The statement for each (table, kind), built once.
SQL: dict[tuple[str, str], str] = {}
for _t in TABLES.values():
    SQL[(_t.name, "p")] = upsert_sql(_t)
    SQL[(_t.name, "d")] = delete_sql(_t)


class Batcher(RowBatcher):
    """A :class:`~..batcher.RowBatcher` with SQLite's statements."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn, SQL)


def apply_ops(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """Apply row operations ``(table, "p", image)`` / ``(table, "d", key)`` in the caller's transaction."""
    b = Batcher(conn)
    b.add(ops)
    b.flush()


def set_applied(conn: sqlite3.Connection, lsn: int) -> None:
    """Record in SQLite the LSN up to which the log is applied (same txn as the rows)."""
    conn.execute("UPDATE _meta SET value = ? WHERE key = 'applied_lsn'", (str(lsn),))


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The ``_meta`` table as a dict."""
    try:
        return {k: v for k, v in conn.execute("SELECT key, value FROM _meta")}
    except sqlite3.DatabaseError as e:
        raise CorruptData(JET_ERR_RESTORE_OF_NON_BACKUP_DATABASE, "database",
                          f"not a pycertsrv database: {e}") from None


def check_chain(gens: dict[int, Path], identity: bytes, low: int | None = None,
                high: int | None = None, restore: bool = False) -> dict[int, logfile.LogHeader]:
    """Check headers, identity and that no generation between low and high is missing."""
    code = JET_ERR_MISSING_RESTORE_LOG_FILES if restore else JET_ERR_MISSING_LOG_FILE
    if not gens:
        return {}
    lo = min(gens) if low is None else low
    hi = max(gens) if high is None else high
    headers: dict[int, logfile.LogHeader] = {}
    for g in range(lo, hi + 1):
        if g not in gens:
            raise CorruptData(code, logfile.log_name(g), f"log generation {g:08X} is missing")
        headers[g] = logfile.read_header(gens[g], identity)
    prev: logfile.LogHeader | None = None
    for g in sorted(headers):
        h = headers[g]
        if prev is not None and h.first_lsn < prev.first_lsn:
            raise CorruptData(JET_ERR_BAD_LOG_SIGNATURE, gens[g].name, "first LSN goes backwards")
        prev = h
    return headers


def replay(
    conn: sqlite3.Connection,
    files: list[Path],
    identity: bytes,
    applied: int,
    *,
    kind: str,
    cut_torn_tail: bool,
    until_lsn: int | None = None,
    until_us: int | None = None,
) -> RecoveryReport:
    """Validate ``files`` (consecutive generations), then apply every record above ``applied``.

    Validation (headers, every record's CRC, the LSN sequence) runs over all files first so that a
    corrupt record anywhere refuses the whole replay before anything is applied, except a damaged
    record the database already contains (LSN <= ``applied``): no recovery of this database needs it,
    so it is stepped over and reported in ``damaged``. Only the last file
    may have a torn tail, which is cut when ``cut_torn_tail`` (soft recovery) and otherwise ends the
    replay there. The apply pass re-walks the memory-mapped files by their frame lengths only (the
    CRCs were checked), decodes each payload and applies records in batches of :data:`BATCH`, each
    one SQLite transaction that also stores the applied LSN.

    :param conn: SQLite connection to the database being recovered.
    :param files: generation files in order.
    :param identity: the database identity every log must carry.
    :param applied: the LSN the database already contains.
    :param until_lsn: stop after this LSN (point in time).
    :param until_us: stop before the first record later than this time (µs since epoch).
    """
    t0 = time.monotonic()
    rep = RecoveryReport(kind=kind, from_lsn=applied + 1, to_lsn=applied)
    scans: list[logfile.ScanResult] = []
    for i, path in enumerate(files):
        res, _ = logfile.scan(path, identity, applied=applied)
        rep.damaged.extend(res.damaged)
        if res.bad_offset is not None and not (res.bad_is_tail and i == len(files) - 1):
            raise logfile.corrupt_error(res)
        if scans:
            prev = scans[-1]
            expected = (prev.last_lsn or prev.header.first_lsn - 1) + 1
            if res.header.first_lsn != expected:
                raise CorruptData(JET_ERR_MISSING_LOG_FILE, path.name,
                                  f"starts at LSN {res.header.first_lsn}, expected {expected}")
        scans.append(res)
    if scans:
        first = scans[0].header.first_lsn
        if first > applied + 1:
            raise CorruptData(JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH, files[0].name,
                              f"starts at LSN {first} but the database needs LSN {applied + 1}")
    last_scan = scans[-1] if scans else None
    if kind == "soft" and last_scan is not None and last_scan.bad_offset is None:
        log_end = last_scan.last_lsn if last_scan.last_lsn is not None else last_scan.header.first_lsn - 1
        if applied > log_end:
            # SQLite holds records the log does not: the newest generation(s) are gone.
            nxt = logfile.log_name(last_scan.header.generation + 1)
            raise CorruptData(JET_ERR_MISSING_LOG_FILE, nxt,
                              f"log generation {nxt} is missing: the database is at LSN {applied} but the log "
                              f"ends at LSN {log_end} in {last_scan.path.name}")
    if last_scan is not None and last_scan.bad_offset is not None:
        good_end = last_scan.last_lsn if last_scan.last_lsn is not None else last_scan.header.first_lsn - 1
        if applied > good_end:
            # The database already holds a record past the bad frame, so that record was committed:
            # this is damage, not a torn write, and cutting it would destroy the evidence.
            raise logfile.corrupt_error(last_scan)
        rep.torn_tail = {"file": last_scan.path.name, "offset": last_scan.bad_offset,
                         "bytes": last_scan.size - last_scan.bad_offset, "reason": last_scan.bad_reason}
        if cut_torn_tail:
            fd = os.open(last_scan.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, last_scan.bad_offset)
                os.fsync(fd)
            finally:
                os.close(fd)
    ctx = _Apply(conn, applied)
    try:
        for res in scans:
            if res.last_lsn is None or res.last_lsn <= ctx.applied:
                continue
            rep.generations.append(res.header.generation)
            with logfile.MappedLog(res.path) as data:
                stopped = ctx.apply_file(data, res, until_lsn, until_us)
            if stopped is not None:
                rep.stopped_at = stopped
                break
        ctx.commit()
    except BaseException:
        ctx.abort()
        raise
    rep.replayed = ctx.applied - applied
    rep.to_lsn = ctx.applied
    rep.seconds = time.monotonic() - t0
    return rep


class _Apply:
    """The apply pass: batches of decoded records, one SQLite transaction per batch."""

    def __init__(self, conn: sqlite3.Connection, applied: int) -> None:
        self.conn = conn
        self.applied = applied  # the last LSN queued (and applied once the batch commits)
        self.batcher = Batcher(conn)
        self.pending = 0
        self.batch_first = applied + 1
        self.in_txn = False

    def apply_file(self, data: Any, res: logfile.ScanResult, until_lsn: int | None,
                   until_us: int | None) -> str | None:
        """Apply the records of one validated generation above ``applied``; returns where it stopped, if it did."""
        unpack = logfile.REC.unpack_from
        rec_size = logfile.REC_SIZE
        add = self.batcher.add
        applied = self.applied
        pos = res.resume_offset  # past any damaged record (those are all at or below the applied LSN)
        stop_end = res.end
        no_until = until_lsn is None and until_us is None
        pending = self.pending
        try:
            while pos < stop_end:
                _, length, lsn, ts = unpack(data, pos)
                start = pos + rec_size
                pos = start + length
                if lsn <= applied:
                    continue
                if not no_until and ((until_lsn is not None and lsn > until_lsn)
                                     or (until_us is not None and ts > until_us)):
                    return f"LSN {lsn} ({logfile.us_to_datetime(ts).isoformat()})"
                if not self.in_txn:
                    self.conn.execute("BEGIN")
                    self.in_txn = True
                    self.batch_first = lsn
                try:
                    ops = decode_payload(data, start, pos)
                except (ValueError, KeyError, TypeError) as e:
                    raise CorruptData(JET_ERR_DATABASE_CORRUPTED, res.path.name,
                                      f"record LSN {lsn} at offset {start - rec_size} cannot be applied: {e}"
                                      ) from None
                add(ops)
                applied = lsn
                pending += 1
                if pending >= BATCH:
                    self.applied, self.pending = applied, pending
                    self.commit()
                    pending = 0
        except sqlite3.DatabaseError as e:
            if is_disk_full(e):  # not damage: the database has no room to grow (issue 10)
                raise disk_full_error(res.path.name, f"records LSN {self.batch_first}..{applied} cannot be "
                                      f"applied: {e}; nothing is lost (they stay in the log)") from None
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, res.path.name,
                              f"records LSN {self.batch_first}..{applied} cannot be applied: {e}") from None
        finally:
            self.applied, self.pending = applied, pending
        return None

    def commit(self) -> None:
        """Run what is queued and commit it with the applied LSN."""
        if not self.in_txn:
            return
        try:
            self.batcher.flush()
        except sqlite3.DatabaseError as e:
            if is_disk_full(e):
                raise disk_full_error("log", f"records LSN {self.batch_first}..{self.applied} cannot be applied: "
                                      f"{e}; nothing is lost (they stay in the log)") from None
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, "log",
                              f"records LSN {self.batch_first}..{self.applied} cannot be applied: {e}") from None
        set_applied(self.conn, self.applied)
        self.conn.commit()
        self.in_txn = False
        self.pending = 0

    def abort(self) -> None:
        """Roll back the batch in progress (earlier batches stay: each is whole and records its LSN)."""
        self.batcher.queues.clear()
        if self.in_txn:
            self.in_txn = False
            try:
                self.conn.rollback()
            except sqlite3.Error:
                pass
