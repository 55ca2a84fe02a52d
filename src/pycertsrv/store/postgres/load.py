"""Hard recovery onto PostgreSQL (issue 12): a set from either engine restores into a PostgreSQL database.

:class:`PgRecoveryTarget` (the :class:`..interface.RecoveryTarget` contract) loads the set's SQLite
snapshot into the target database, then replays the set's log generations IN that database: every record
becomes a log row (payload, time and CRC as in the ``edb`` file, so re-exporting gives the same bytes) and
the records past the snapshot's LSN are applied to the tables, up to ``Until``. All of it is ONE
PostgreSQL transaction, committed by :meth:`~PgRecoveryTarget.finish` only after
:func:`.exports.check_log` passed inside it: a failed, aborted or interrupted restore leaves the database
as it was, and a CA never serves from a database that failed the check.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import (
    E_UNEXPECTED,
    ERROR_FILE_EXISTS,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_LOG_FILE_CORRUPT,
    CertSrvError,
    Conflict,
    CorruptData,
)
from ...fsutil import create_file
from .. import logfile, schema
from ..interface import EVERYTHING, ByteStream, Until
from ..logfile import decode_payload
from ..report import RecoveryReport
from ..sqlite.replay import check_chain, read_meta  # the snapshot IS a SQLite file, by contract
from . import ddl, lease, sql
from .connect import as_certsrv, connect, describe
from .exports import COPY_BATCH, check_log
from .streams import scratch_dir


class PgRecoveryTarget:
    """Rebuild a CA database in ``url`` from a snapshot and generations (calls in the protocol's order).

    :param force: replace a CA database already there (emptied in the same transaction).
    :param scratch: where the streams are written while replaying (a private temp dir by default).
    """

    def __init__(self, url: str, *, force: bool = False, home: Path | None = None) -> None:
        self.url = url
        self.force = force
        self._dir = scratch_dir(home)
        self._conn: Any = None
        self._snapshot: Path | None = None
        self._meta: dict[str, str] = {}
        self.report: RecoveryReport | None = None

    def _fail(self, e: BaseException) -> CertSrvError:
        self.abort()
        return as_certsrv(self.url, e)

    def load_snapshot(self, snapshot: ByteStream) -> int:
        """Write the snapshot's bytes to scratch, then copy its tables into the target; returns its LSN."""
        path = self._dir / "snapshot.db"
        _write_stream(snapshot, path)
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                self._meta = read_meta(src)
                self._conn = connect(self.url, autocommit=False)  # one transaction until finish/abort
                cur = self._conn.cursor()
                ddl.upgrade(cur, logfile.now_us())
                _empty_target(cur, self.url, self.force)
                cur.executemany("INSERT INTO _meta (key, value) VALUES (%s, %s)",
                                src.execute("SELECT key, value FROM _meta").fetchall())
                for t in schema.TABLES.values():
                    rows = src.execute(f"SELECT {', '.join(t.column_names)} FROM {t.name}")
                    while batch := rows.fetchmany(COPY_BATCH):
                        cur.executemany(sql.SQL[(t.name, "p")], batch)
            finally:
                src.close()
        except BaseException as e:
            raise self._fail(e) from None
        self._snapshot = path
        return int(self._meta["applied_lsn"])

    def replay(self, generations: Sequence[ByteStream], until: Until = EVERYTHING,
               *, identity: str | None = None) -> RecoveryReport:
        """Insert every record as a log row and apply those past the snapshot, up to ``until``."""
        if self._conn is None:
            raise CertSrvError(E_UNEXPECTED, "restore", "replay before load_snapshot")
        t0 = time.monotonic()
        ident = identity or self._meta["identity"]
        if ident != self._meta["identity"]:
            raise self._fail(CorruptData(JET_ERR_DATABASE_CORRUPTED, "restore",
                                         f"database belongs to {self._meta['identity']}, not {ident}"))
        try:
            logs = self._dir / "logs"
            logs.mkdir(exist_ok=True)
            for g in generations:
                _write_stream(g, logs / g.name)
            gens = logfile.list_generations(logs)
            if gens:
                check_chain(gens, bytes.fromhex(ident), min(gens), max(gens), restore=True)
            applied = int(self._meta["applied_lsn"])
            scans = [logfile.scan(p, bytes.fromhex(ident), applied=applied)[0] for p in gens.values()]
            for s in scans:  # every CRC checked before anything is replayed; a torn tail only at the end
                if s.bad_offset is not None and not (s.bad_is_tail and s is scans[-1]):
                    raise logfile.corrupt_error(s)
                if s.damaged:  # the SQLite engine steps over these; a log kept as rows cannot hold a gap
                    d = s.damaged[0]
                    raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, s.path.name,
                                      f"damaged record(s) LSN {d['lsns'][0]}..{d['lsns'][1]} at offset {d['offset']} "
                                      "(already in the snapshot); restore it onto SQLite, or use a newer full set")
            rep = _replay(self._conn.cursor(), scans, applied, until)
        except BaseException as e:
            raise self._fail(e) from None
        rep.seconds = time.monotonic() - t0
        self.report = rep
        return rep

    def check_integrity(self) -> str:
        """The log check inside the (uncommitted) restore transaction."""
        if self._conn is None:
            raise CertSrvError(E_UNEXPECTED, "restore", "check_integrity before load_snapshot")
        try:
            return check_log(self._conn, own_transaction=False)
        except BaseException as e:
            raise self._fail(e) from None

    def finish(self) -> None:
        """Commit the rebuilt database: from now on a CA may open it."""
        if self._conn is None:
            raise CertSrvError(E_UNEXPECTED, "restore", "finish before load_snapshot")
        result = self.check_integrity()
        if result != "ok":
            raise self._fail(CorruptData(JET_ERR_DATABASE_CORRUPTED, describe(self.url),
                                         f"integrity check failed: {result}; nothing was restored"))
        try:
            self._conn.commit()
        except BaseException as e:
            raise self._fail(e) from None
        self._conn.close()
        self._conn = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def abort(self) -> None:
        """Roll everything back (idempotent)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        shutil.rmtree(self._dir, ignore_errors=True)


class FileStream:
    """A local file as a :class:`..interface.ByteStream` (a backup set's file, read by range)."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self._path = path
        self.size = path.stat().st_size

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset .. offset+n``."""
        with open(self._path, "rb") as f:
            f.seek(offset)
            return f.read(max(0, min(n, self.size - offset)))

    def file_range(self, offset: int, n: int) -> None:
        """No zero-copy view: callers read."""
        return None

    def close(self) -> None:
        """Nothing held."""


def restore_into(url: str, db_file: Path, generations: Sequence[Path], *, force: bool = False,
                 until: Until = EVERYTHING, home: Path | None = None) -> RecoveryReport:
    """Restore a snapshot file and generation files into ``url`` (load, replay, check, commit)."""
    target = PgRecoveryTarget(url, force=force, home=home)
    target.load_snapshot(FileStream(Path(db_file)))
    rep = target.replay([FileStream(Path(p)) for p in generations], until)
    target.finish()
    return rep


def _write_stream(stream: ByteStream, path: Path, chunk: int = 1 << 20) -> None:
    create_file(path)
    with open(path, "r+b") as f:
        off = 0
        while off < stream.size:
            data = stream.read(off, chunk)
            if not data:
                break
            f.write(data)
            off += len(data)


def _empty_target(cur: Any, url: str, force: bool) -> None:
    row = cur.execute("SELECT value FROM _meta WHERE key = 'identity'").fetchone()
    if row is not None and not force:
        raise Conflict(ERROR_FILE_EXISTS, describe(url),
                       f"this database holds a CA already (identity {row[0]}); restore with --force to replace it")
    cur.execute(f"TRUNCATE {', '.join(['_meta', 'log_record', 'log_generation', *schema.TABLES])}")
    # The next writer takes a new epoch: a node of the replaced CA still running is fenced.
    cur.execute("UPDATE writer_lease SET epoch = epoch + 1, holder = '', renewed_us = 0 WHERE id = 1")
    lease.declare(cur, int(cur.execute("SELECT epoch FROM writer_lease WHERE id = 1").fetchone()[0]))


def _replay(cur: Any, scans: list[logfile.ScanResult], applied: int, until: Until) -> RecoveryReport:
    rep = RecoveryReport(kind="hard", from_lsn=applied + 1, to_lsn=applied)
    if scans and scans[0].header.first_lsn > applied + 1:
        from ...errors import JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH

        raise CorruptData(JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH, scans[0].path.name,
                          f"starts at LSN {scans[0].header.first_lsn} but the database needs LSN {applied + 1}")
    last = applied
    last_gen = 0
    stopped = False
    for res in scans:
        if stopped:
            break
        h = res.header
        cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us, closed_us) VALUES (%s, %s, %s, %s)",
                    (h.generation, h.first_lsn, h.created_us, logfile.now_us()))
        last_gen = h.generation
        rows: list[tuple[int, int, int, int, bytes]] = []
        batch: list[list[logfile.Op]] = []
        with logfile.MappedLog(res.path) as data:
            for rec in logfile.iter_records(data):
                if not isinstance(rec, logfile.Record):
                    break  # the torn tail of the last generation: the log ends there
                if rec.lsn > applied and ((until.lsn is not None and rec.lsn > until.lsn)
                                          or (until.time_us is not None and rec.ts_us > until.time_us)):
                    rep.stopped_at = f"LSN {rec.lsn} ({logfile.us_to_datetime(rec.ts_us).isoformat()})"
                    stopped = True
                    break
                rows.append((rec.lsn, h.generation, rec.ts_us, logfile.REC.unpack_from(data, rec.offset)[0],
                             rec.payload))
                if rec.lsn > applied:
                    batch.append(decode_payload(rec.payload))
                    last = rec.lsn
                if len(rows) >= COPY_BATCH:
                    _flush(cur, rows, batch)
                    rows, batch = [], []
        _flush(cur, rows, batch)
        if res.last_lsn is not None and res.last_lsn > applied:
            rep.generations.append(h.generation)
    # The restored CA writes a fresh generation after the last one replayed (as the SQLite engine does).
    top = int(cur.execute("SELECT coalesce(max(lsn), 0) FROM log_record").fetchone()[0])
    last = max(last, top)
    cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us) VALUES (%s, %s, %s)",
                (last_gen + 1 if last_gen else 1, last + 1, logfile.now_us()))
    cur.execute("UPDATE _meta SET value = %s WHERE key = 'applied_lsn'", (str(last),))
    rep.replayed = max(0, last - applied)
    rep.to_lsn = last
    return rep


def _flush(cur: Any, rows: list[tuple[int, int, int, int, bytes]], batch: list[list[logfile.Op]]) -> None:
    if rows:
        cur.executemany(sql.INSERT_LOG, rows)
    if batch:
        sql.apply_batch(cur, batch)
