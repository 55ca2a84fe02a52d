"""What leaves PostgreSQL for a backup set (issue 12), in the SQLite engine's formats exactly.

- :func:`snapshot_to_sqlite`: ONE ``REPEATABLE READ READ ONLY`` transaction reads ``max(lsn)`` and copies
  ``_meta`` and every materialised table into a new SQLite file created by the SQLite engine's own
  :func:`..sqlite.ddl.create_schema`, so a set taken from PostgreSQL holds the same kind of database file
  as one taken from SQLite (rollback journal, the same tables and ``_meta`` keys).
- :func:`export_generation`: the log rows of one generation as an ``edbXXXXXXXX.log`` file: the same
  64-byte header and frames (:func:`..logfile.encode_record`), each row's CRC checked on the way out.
- :func:`check_log`: the integrity check run before a restored PostgreSQL CA serves.
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import JET_ERR_DATABASE_CORRUPTED, JET_ERR_LOG_FILE_CORRUPT, CorruptData
from ...fsutil import PRIVATE_FILE, create_file, publish_file
from .. import logfile, schema
from ..sqlite import ddl

COPY_BATCH = 2000


@dataclass(frozen=True)
class PgSnapshot:
    """A snapshot written to a SQLite file: the LSN it holds and the generation holding the next record."""

    path: Path
    lsn: int
    generation: int
    size: int


def snapshot_to_sqlite(conn: Any, dest: Path, *, durable: bool = True) -> PgSnapshot:
    """Copy the database at one LSN into a SQLite file ``dest`` (replaced atomically when ``durable``)."""
    tmp = dest.with_name(dest.name + ".tmp") if durable else dest
    tmp.unlink(missing_ok=True)
    create_file(tmp)  # private before SQLite fills it (a snapshot holds every request)
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        # A new file used only once complete: no journal, no syncs while filling it (as the SQLite engine).
        dst.execute("PRAGMA journal_mode=OFF")
        dst.execute("PRAGMA synchronous=OFF")
        dst.execute("BEGIN")
        ddl.create_schema(dst)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            lsn = int(conn.execute("SELECT coalesce(max(lsn), 0) FROM log_record").fetchone()[0])
            meta = conn.execute("SELECT key, value FROM _meta").fetchall()
            dst.executemany("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", meta)
            for t in schema.TABLES.values():
                cur = conn.cursor(name=f"snap_{t.name}")  # server-side: the table is streamed, not loaded
                cur.itersize = COPY_BATCH
                cur.execute(f"SELECT {', '.join(t.column_names)} FROM {t.name} ORDER BY {', '.join(t.key)}")
                ins = ddl.upsert_sql(t)
                while rows := cur.fetchmany(COPY_BATCH):
                    dst.executemany(ins, rows)
                cur.close()
            gen = conn.execute("SELECT max(gen) FROM log_generation WHERE first_lsn <= %s", (lsn + 1,)).fetchone()[0]
        applied = dst.execute("SELECT value FROM _meta WHERE key = 'applied_lsn'").fetchone()
        if applied is None or int(applied[0]) != lsn:
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, "snapshot",
                              f"_meta.applied_lsn {applied[0] if applied else None} is not the log's last LSN {lsn}")
        dst.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
    if durable:
        publish_file(tmp, dest)
    return PgSnapshot(dest, lsn, int(gen or 1), dest.stat().st_size)


@dataclass(frozen=True)
class ExportedGeneration:
    """An exported generation's file and the LSNs it holds (``last_lsn`` = ``first_lsn - 1`` when empty)."""

    path: Path
    first_lsn: int
    last_lsn: int


def export_generation(conn: Any, identity: str, gen: int, dest_dir: Path, *,
                      durable: bool = True) -> ExportedGeneration:
    """Write generation ``gen`` as ``dest_dir/edbXXXXXXXX.log`` (temp, then rename; fsync'ed when ``durable``).

    A scratch copy that only lives while a backup reads it (``durable=False``) needs no fsync.
    """
    with conn.transaction():  # one view of the generation; its server-side cursor needs a transaction
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _export(conn, identity, gen, dest_dir, durable)


def _export(conn: Any, identity: str, gen: int, dest_dir: Path, durable: bool) -> ExportedGeneration:
    row = conn.execute("SELECT first_lsn, created_us FROM log_generation WHERE gen = %s", (gen,)).fetchone()
    if row is None:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, logfile.log_name(gen), "no such generation in the database")
    header = logfile.LogHeader(gen, bytes.fromhex(identity), int(row[1]), int(row[0]), 0)
    final = dest_dir / logfile.log_name(gen)
    tmp = dest_dir / (final.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        out = [header.encode()]
        expect = int(row[0])
        cur = conn.cursor(name=f"export_{gen}")
        cur.itersize = COPY_BATCH
        cur.execute("SELECT lsn, ts_us, crc, payload FROM log_record WHERE gen = %s ORDER BY lsn", (gen,))
        for lsn, ts, crc, payload in cur:
            if lsn != expect:
                raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, final.name, f"LSN {expect} is missing (next is {lsn})")
            rec = logfile.encode_record(int(lsn), int(ts), bytes(payload))
            if zlib.crc32(memoryview(rec)[4:]) != int(crc):
                raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, final.name, f"checksum mismatch in record LSN {lsn}")
            out.append(rec)
            expect += 1
            if len(out) >= COPY_BATCH:
                os.write(fd, b"".join(out))
                out = []
        cur.close()
        os.write(fd, b"".join(out))
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a failed export leaves nothing behind
        raise
    os.close(fd)
    if durable:
        publish_file(tmp, final)
    else:
        os.replace(tmp, final)
    return ExportedGeneration(final, int(row[0]), expect - 1)


def check_log(conn: Any, *, own_transaction: bool = True) -> str:
    """``"ok"``, or what is wrong: LSN gaps, CRC mismatches, tables not at the log's last LSN.

    :param own_transaction: run in a read-only transaction of its own; False: in the caller's open
        transaction (a restore checks what it wrote before committing it).
    """
    if not own_transaction:
        return _check_log(conn)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _check_log(conn)


def _check_log(conn: Any) -> str:
    lo, hi, n = conn.execute("SELECT min(lsn), max(lsn), count(*) FROM log_record").fetchone()
    if n and int(hi) - int(lo) + 1 != int(n):
        return f"log has gaps: {n} records between LSN {lo} and {hi}"
    bad = conn.execute("WITH g AS (SELECT gen, first_lsn, lead(first_lsn) OVER (ORDER BY gen) AS next "
                       "FROM log_generation) SELECT r.lsn FROM log_record r JOIN g USING (gen) "
                       "WHERE r.lsn < g.first_lsn OR r.lsn >= g.next LIMIT 1").fetchone()
    if bad:
        return f"record LSN {bad[0]} is outside its generation's range"
    cur = conn.cursor(name="check_crc")
    cur.itersize = COPY_BATCH
    cur.execute("SELECT lsn, ts_us, crc, payload FROM log_record ORDER BY lsn")
    for lsn, ts, crc, payload in cur:
        if zlib.crc32(logfile.encode_record(int(lsn), int(ts), bytes(payload))[4:]) != int(crc):
            return f"checksum mismatch in record LSN {lsn}"
    cur.close()
    applied = conn.execute("SELECT value FROM _meta WHERE key = 'applied_lsn'").fetchone()
    if n and (applied is None or int(applied[0]) != int(hi)):
        return f"tables are at LSN {applied[0] if applied else None}, the log ends at {hi}"
    return "ok"
