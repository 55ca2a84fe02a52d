"""Hard recovery onto PostgreSQL (issue 12): a set from either engine restores into a PostgreSQL database.

:func:`restore_into` loads the set's SQLite snapshot into the target database, then replays the set's
log generations IN that database: every record becomes a log row (payload, time and CRC as in the
``edb`` file, so re-exporting gives the same bytes) and the records past the snapshot's LSN are applied
to the tables, up to ``until_lsn`` / ``until_us``. Everything is ONE PostgreSQL transaction: a failed
or interrupted restore leaves the database as it was. The log is checked (:func:`.exports.check_log`)
inside that transaction before it commits, so a CA never serves from a database that fails it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ERROR_FILE_EXISTS, JET_ERR_DATABASE_CORRUPTED, Conflict, CorruptData
from .. import logfile, schema
from ..replay import RecoveryReport, check_chain, decode_payload, read_meta
from . import ddl, sql
from .connect import as_certsrv as _as_certsrv
from .connect import connect, describe
from .exports import COPY_BATCH, check_log


def restore_into(url: str, db_file: Path, log_dir: Path, gen_low: int, gen_high: int, *, force: bool = False,
                 until_lsn: int | None = None, until_us: int | None = None,
                 extra_generations: Sequence[Path] = ()) -> RecoveryReport:
    """Load snapshot ``db_file`` and replay generations ``gen_low..gen_high`` of ``log_dir`` into ``url``.

    :param force: replace a CA database already in ``url`` (its tables are emptied in the same transaction).
    :param until_lsn: stop after this LSN; ``until_us``: before the first record later than this time.
    """
    import time

    t0 = time.monotonic()
    src = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        meta = read_meta(src)
        ident = bytes.fromhex(meta["identity"])
        applied = int(meta["applied_lsn"])
        gens = logfile.list_generations(Path(log_dir))
        check_chain(gens, ident, gen_low, gen_high, restore=True)
        files = [gens[g] for g in range(gen_low, gen_high + 1)] + list(extra_generations)
        scans = [logfile.scan(f, ident, applied=applied)[0] for f in files]  # every CRC, before anything is written
        for s in scans:
            if s.bad_offset is not None and s is not scans[-1]:
                raise logfile.corrupt_error(s)
        conn = connect(url)
        try:
            with conn.transaction():
                ddl.upgrade(conn, logfile.now_us())
                _empty_target(conn, url, force)
                cur = conn.cursor()
                cur.executemany("INSERT INTO _meta (key, value) VALUES (%s, %s)",
                                src.execute("SELECT key, value FROM _meta").fetchall())
                for t in schema.TABLES.values():
                    rows = src.execute(f"SELECT {', '.join(t.column_names)} FROM {t.name}")
                    while batch := rows.fetchmany(COPY_BATCH):
                        cur.executemany(sql.SQL[(t.name, "p")], batch)
                rep = _replay(cur, scans, applied, until_lsn, until_us)
                result = check_log(conn)
                if result != "ok":
                    raise CorruptData(JET_ERR_DATABASE_CORRUPTED, describe(url), f"integrity check failed: {result}")
        except Exception as e:
            raise _as_certsrv(url, e) from None
        finally:
            conn.close()
    finally:
        src.close()
    rep.seconds = time.monotonic() - t0
    return rep


def _empty_target(conn: Any, url: str, force: bool) -> None:
    row = conn.execute("SELECT value FROM _meta WHERE key = 'identity'").fetchone()
    if row is not None and not force:
        raise Conflict(ERROR_FILE_EXISTS, describe(url),
                       f"this database holds a CA already (identity {row[0]}); restore with --force to replace it")
    tables = ["_meta", "log_record", "log_generation", *schema.TABLES]
    conn.execute(f"TRUNCATE {', '.join(tables)}")
    # The next writer takes a new epoch: a node of the replaced CA still running is fenced.
    conn.execute("UPDATE writer_lease SET epoch = epoch + 1, holder = '', renewed_us = 0 WHERE id = 1")


def _replay(cur: Any, scans: list[logfile.ScanResult], applied: int, until_lsn: int | None,
            until_us: int | None) -> RecoveryReport:
    rep = RecoveryReport(kind="hard", from_lsn=applied + 1, to_lsn=applied)
    last = applied
    last_gen = scans[0].header.generation if scans else 1
    stopped = False
    for res in scans:
        h = res.header
        if stopped:
            break
        cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us, closed_us) VALUES (%s, %s, %s, %s)",
                    (h.generation, h.first_lsn, h.created_us, logfile.now_us()))
        last_gen = h.generation
        rows: list[tuple[int, int, int, int, bytes]] = []
        batch: list[list[logfile.Op]] = []
        with logfile.MappedLog(res.path) as data:
            for rec in logfile.iter_records(data):
                if not isinstance(rec, logfile.Record):
                    break  # a torn tail of the last generation (checked above): the log ends there
                if rec.lsn > applied and ((until_lsn is not None and rec.lsn > until_lsn)
                                          or (until_us is not None and rec.ts_us > until_us)):
                    rep.stopped_at = f"LSN {rec.lsn} ({logfile.us_to_datetime(rec.ts_us).isoformat()})"
                    stopped = True
                    break
                crc = logfile.REC.unpack_from(data, rec.offset)[0]
                rows.append((rec.lsn, h.generation, rec.ts_us, crc, rec.payload))
                if rec.lsn > applied:
                    batch.append(decode_payload(rec.payload))
                    last = rec.lsn
                if len(rows) >= COPY_BATCH:
                    _flush(cur, rows, batch)
                    rows, batch = [], []
        _flush(cur, rows, batch)
        if res.last_lsn is not None and res.last_lsn > applied:
            rep.generations.append(h.generation)
    # The restored CA writes a fresh generation after the last one replayed (the SQLite engine's rule).
    cur.execute("INSERT INTO log_generation (gen, first_lsn, created_us) VALUES (%s, %s, %s)",
                (last_gen + 1, last + 1 if last >= applied else applied + 1, logfile.now_us()))
    # Log rows past a --until cut were not loaded; records below the snapshot are kept as log rows.
    top = cur.execute("SELECT coalesce(max(lsn), 0) FROM log_record").fetchone()[0]
    if int(top) > last:
        last = int(top)
    cur.execute("UPDATE _meta SET value = %s WHERE key = 'applied_lsn'", (str(last),))
    rep.replayed = max(0, last - applied)
    rep.to_lsn = last
    return rep


def _flush(cur: Any, rows: list[tuple[int, int, int, int, bytes]], batch: list[list[logfile.Op]]) -> None:
    if rows:
        cur.executemany("INSERT INTO log_record (lsn, gen, ts_us, crc, payload) VALUES (%s, %s, %s, %s, %s)", rows)
    if batch:
        sql.apply_batch(cur, batch)
