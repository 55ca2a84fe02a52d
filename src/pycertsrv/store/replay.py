"""Replaying log records onto SQLite: the shared core of soft (crash) and hard (restore) recovery."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    JET_ERR_BAD_LOG_SIGNATURE,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_MISSING_LOG_FILE,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    JET_ERR_RESTORE_OF_NON_BACKUP_DATABASE,
    JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH,
    CorruptData,
)
from . import logfile
from .schema import TABLES, delete_sql, image_to_params, upsert_sql

BATCH = 2000


def encode_payload(ops: list[list[Any]]) -> bytes:
    """Serialise a transaction's row images."""
    return json.dumps(ops, separators=(",", ":")).encode()


def statements(ops: list[list[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``(sql, params)`` for decoded row images (``[table, "p", image]`` or ``[table, "d", key]``)."""
    for tname, op, data in ops:
        t = TABLES[tname]
        if op == "p":
            yield upsert_sql(t), image_to_params(t, data)
        elif op == "d":
            yield delete_sql(t), data
        else:
            raise ValueError(f"unknown op {op!r}")


class Batcher:
    """Runs statements in order, grouping consecutive ones with the same SQL into one ``executemany``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.sql = ""
        self.params: list[list[Any]] = []

    def add(self, ops: list[list[Any]]) -> None:
        """Queue one record's row images (decoding errors surface here, for this record)."""
        for sql, params in statements(ops):
            if sql != self.sql:
                self.flush()
                self.sql = sql
            self.params.append(params)

    def flush(self) -> None:
        """Execute what is queued."""
        if self.params:
            self.conn.executemany(self.sql, self.params)
            self.params = []


def apply_ops(conn: sqlite3.Connection, ops: list[list[Any]]) -> None:
    """Apply decoded row images (``[table, "p", image]`` or ``[table, "d", key]``) in the caller's txn."""
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


@dataclass
class RecoveryReport:
    """What a recovery did: records replayed, LSN range, tail cut, time taken."""

    kind: str = "soft"
    replayed: int = 0
    from_lsn: int = 0
    to_lsn: int = 0
    generations: list[int] = field(default_factory=list)
    torn_tail: dict[str, Any] | None = None
    stopped_at: str | None = None
    seconds: float = 0.0
    clean: bool = True

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.replayed == 0 and self.torn_tail is None:
            return f"{self.kind} recovery: nothing to replay (applied LSN {self.to_lsn})"
        s = (f"{self.kind} recovery: replayed {self.replayed} records (LSN {self.from_lsn}..{self.to_lsn}) "
             f"from {len(self.generations)} generation(s) in {self.seconds:.3f}s")
        if self.torn_tail:
            s += f"; cut torn tail of {self.torn_tail['file']} at offset {self.torn_tail['offset']}"
        if self.stopped_at:
            s += f"; stopped at {self.stopped_at}"
        return s

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return dict(self.__dict__)


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

    Validation runs over all files first so that a corrupt record anywhere refuses the whole
    replay before anything is applied. Only the last file may have a torn tail, which is cut
    when ``cut_torn_tail`` (soft recovery) and otherwise ends the replay there.

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
        res, _ = logfile.scan(path, identity)
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
    if last_scan is not None and last_scan.bad_offset is not None:
        good_end = last_scan.last_lsn if last_scan.last_lsn is not None else last_scan.header.first_lsn - 1
        if applied > good_end:
            # The database already holds a record past the bad frame, so that record was committed:
            # this is damage, not a torn write, and cutting it would destroy the evidence.
            raise logfile.corrupt_error(last_scan)
        rep.torn_tail = {"file": last_scan.path.name, "offset": last_scan.bad_offset,
                         "bytes": last_scan.size - last_scan.bad_offset, "reason": last_scan.bad_reason}
        if cut_torn_tail:
            import os

            fd = os.open(last_scan.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, last_scan.bad_offset)
                os.fsync(fd)
            finally:
                os.close(fd)
    pending = 0
    batch_first = applied + 1
    stop = False
    batcher = Batcher(conn)
    for res in scans:
        if res.last_lsn is None or res.last_lsn <= applied:
            continue
        rep.generations.append(res.header.generation)
        data = res.path.read_bytes()[: res.end]
        for item in logfile.iter_records(data):
            assert not isinstance(item, tuple)  # validated above
            if item.lsn <= applied:
                continue
            if (until_lsn is not None and item.lsn > until_lsn) or (
                until_us is not None and item.ts_us > until_us
            ):
                rep.stopped_at = f"LSN {item.lsn} ({logfile.us_to_datetime(item.ts_us).isoformat()})"
                stop = True
                break
            if pending == 0:
                conn.execute("BEGIN")
                batch_first = item.lsn
            try:
                batcher.add(json.loads(item.payload.decode()))
                if pending + 1 >= BATCH:
                    batcher.flush()
            except (ValueError, KeyError, TypeError) as e:
                conn.rollback()
                raise CorruptData(JET_ERR_DATABASE_CORRUPTED, res.path.name,
                                  f"record LSN {item.lsn} at offset {item.offset} cannot be applied: {e}"
                                  ) from None
            except sqlite3.DatabaseError as e:
                conn.rollback()
                raise CorruptData(JET_ERR_DATABASE_CORRUPTED, res.path.name,
                                  f"records LSN {batch_first}..{item.lsn} cannot be applied: {e}") from None
            applied = item.lsn
            rep.replayed += 1
            pending += 1
            if pending >= BATCH:
                set_applied(conn, applied)
                conn.commit()
                pending = 0
        if stop:
            break
    if pending:
        try:
            batcher.flush()
        except sqlite3.DatabaseError as e:
            conn.rollback()
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, "log",
                              f"records LSN {batch_first}..{applied} cannot be applied: {e}") from None
        set_applied(conn, applied)
        conn.commit()
    rep.to_lsn = applied
    rep.seconds = time.monotonic() - t0
    return rep
