"""Recovery: soft (crash recovery at open) and hard (a restored snapshot brought forward by backed-up logs).

Both replay log records above the database's applied LSN (:func:`..replay.replay`); soft recovery also cuts a
torn tail (a record the crash cut, never acknowledged) and tells the store where appending resumes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import JET_ERR_DATABASE_CORRUPTED, JET_ERR_LOG_FILE_CORRUPT, JET_ERR_MISSING_LOG_FILE, CorruptData
from ...fsutil import create_file, fsync_dir, make_dirs
from .. import health as health_mod
from .. import logfile
from ..interface import EVERYTHING, ByteStream, Until
from .checkpoint import Checkpoint
from .dbfile import connect_for_replay, connect_plain, sync_database
from .replay import RecoveryReport, check_chain, read_meta, replay


@dataclass(frozen=True)
class LogTail:
    """Where the log stands after soft recovery: the open generation and its end.

    :param report: what the replay did.
    :param path: the newest generation's file (appending resumes there).
    :param generation: its number.
    :param first_lsn: its first LSN.
    :param created_us: when it was started.
    :param end: bytes of whole records in it (the next record goes there; the file may be preallocated past it).
    :param last_lsn: the last LSN in the log (every one up to it is applied now).
    """

    report: RecoveryReport
    path: Path
    generation: int
    first_lsn: int
    created_us: int
    end: int
    last_lsn: int


def _backup_history(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
    """The recorded backups (backup_id, kind, ended_at) in id order, for restore advice; empty when unreadable."""
    try:
        rows = conn.execute("SELECT backup_id, kind, ended_at FROM backup_history ORDER BY backup_id").fetchall()
    except sqlite3.Error:
        return []
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def soft_recover(writer: sqlite3.Connection, log_dir: Path, identity: str, applied: int, cp: Checkpoint | None,
                 home: Path, db_name: str) -> LogTail:
    """Apply every durable record above ``applied`` to the database of ``writer``; find the log's end.

    :param writer: the live database's writer connection.
    :param log_dir: the home's log directory.
    :param identity: the database identity (hex), checked in every generation header.
    :param applied: the database's applied LSN.
    :param cp: the checkpoint, if any (the generation it names must exist).
    :param home: the CA home (for restore advice in errors).
    :param db_name: the database file's name (for errors).
    """
    ident = bytes.fromhex(identity)
    # Stale temp files of an interrupted roll never held a committed record.
    for p in log_dir.glob("*.log.tmp"):
        p.unlink()
    gens = logfile.list_generations(log_dir)
    headers = check_chain(gens, ident)
    if not headers:
        raise CorruptData(JET_ERR_MISSING_LOG_FILE, str(log_dir), "no log generation found")
    newest = max(headers)
    if cp is not None and newest < cp.generation:
        # The checkpoint names the generation holding its next LSN, which existed when it was written:
        # without it, appending to the newest one present would write into a closed generation.
        raise CorruptData(JET_ERR_MISSING_LOG_FILE, logfile.log_name(newest + 1),
                          f"log generation {newest + 1:08X} is missing: the checkpoint (LSN {cp.lsn}) is in "
                          f"generation {cp.generation:08X} but the newest one present is {newest:08X}")
    # Replay starts at the generation holding applied+1: the last one whose first LSN <= applied+1.
    start = [g for g, h in headers.items() if h.first_lsn <= applied + 1]
    if not start:
        first = min(headers)
        raise CorruptData(JET_ERR_MISSING_LOG_FILE, logfile.log_name(first - 1 if first > 1 else first),
                          f"database needs LSN {applied + 1} but the oldest log starts at "
                          f"{headers[first].first_lsn}")
    files = [gens[g] for g in headers if g >= max(start)]
    try:
        report = replay(writer, files, ident, applied, kind="soft", cut_torn_tail=True)
    except CorruptData as e:
        if e.hresult != JET_ERR_LOG_FILE_CORRUPT:
            raise
        # Damage above the applied LSN: the record is needed and exists nowhere else in this home.
        raise CorruptData(e.hresult, e.function,
                          f"{e.message}; {health_mod.restore_advice(_backup_history(writer), home)}") from None
    res, _ = logfile.scan(gens[newest], ident, applied=report.to_lsn)
    last = res.last_lsn if res.last_lsn is not None else headers[newest].first_lsn - 1
    if last < report.to_lsn:
        raise CorruptData(JET_ERR_DATABASE_CORRUPTED, db_name,
                          f"database is at LSN {report.to_lsn}, past the log's end {last}")
    h = headers[newest]
    return LogTail(report, gens[newest], newest, h.first_lsn, h.created_us, res.end, last)


def hard_recover(
    db_path: Path,
    log_dir: Path,
    gen_low: int,
    gen_high: int,
    *,
    identity: str | None = None,
    until_lsn: int | None = None,
    until_us: int | None = None,
    extra_generations: Sequence[Path] = (),
) -> RecoveryReport:
    """Replay generations ``gen_low..gen_high`` from ``log_dir`` onto a restored database file.

    :param db_path: the database snapshot to bring forward (modified in place).
    :param log_dir: directory holding the backed-up generations.
    :param gen_low: first generation to replay.
    :param gen_high: last generation to replay; each one in between must exist.
    :param identity: the CA's database identity (defaults to the snapshot's own).
    :param until_lsn: stop after this LSN.
    :param until_us: stop before the first record later than this time (µs since epoch).
    :param extra_generations: contiguous newer generations to roll forward afterwards (phase II).

    The file is written without SQLite's per-commit syncs and with its rollback journal in memory
    (each batch stays all-or-nothing against SQL errors) and fsynced once at the end: a process that
    dies during hard recovery leaves a file to be discarded, which is why restores run it on a temp
    copy and start over from the restored file after a crash (see :mod:`.restore`).
    """
    conn = connect_for_replay(db_path)
    try:
        meta = read_meta(conn)
        ident = identity or meta["identity"]
        if meta["identity"] != ident:
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, db_path.name,
                              f"database belongs to {meta['identity']}, not {ident}")
        gens = logfile.list_generations(Path(log_dir))
        check_chain(gens, bytes.fromhex(ident), gen_low, gen_high, restore=True)
        files = [gens[g] for g in range(gen_low, gen_high + 1)] + list(extra_generations)
        rep = replay(conn, files, bytes.fromhex(ident), int(meta["applied_lsn"]), kind="hard",
                     cut_torn_tail=False, until_lsn=until_lsn, until_us=until_us)
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, db_path.name, f"integrity check failed: {result}")
    finally:
        conn.close()
    # synchronous=OFF above: make the result durable here, once.
    sync_database(db_path)
    return rep


class FileRecoveryTarget:
    """A :class:`~pycertsrv.store.interface.RecoveryTarget` that rebuilds one SQLite database file.

    Everything is written beside ``dest`` in a private work directory (``.<name>.target``) and renamed onto
    ``dest`` only by :meth:`finish`; :meth:`abort` (or a crash) leaves ``dest`` as it was.

    :param dest: the database file to produce.
    """

    CHUNK = 4 << 20

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self.work = self.dest.with_name(f".{self.dest.name}.target")
        self._db = self.work / self.dest.name
        self._lsn: int | None = None

    def _copy(self, stream: ByteStream, path: Path) -> None:
        with open(path, "wb") as out:
            pos = 0
            while pos < stream.size:
                chunk = stream.read(pos, self.CHUNK)
                if not chunk:
                    raise CorruptData(JET_ERR_DATABASE_CORRUPTED, stream.name,
                                      f"{stream.name} ended at {pos} bytes, before its size {stream.size}")
                out.write(chunk)
                pos += len(chunk)

    def load_snapshot(self, snapshot: ByteStream) -> int:
        """Copy the snapshot's bytes into the work directory; returns its LSN."""
        self.abort()
        make_dirs(self.work)
        create_file(self._db)
        self._copy(snapshot, self._db)
        conn = connect_plain(self._db)
        try:
            self._lsn = int(read_meta(conn)["applied_lsn"])
        finally:
            conn.close()
        return self._lsn

    def replay(self, generations: Sequence[ByteStream], until: Until = EVERYTHING,
               *, identity: str | None = None) -> RecoveryReport:
        """Write the generations' bytes as ``edbXXXXXXXX.log`` files and replay them (:func:`hard_recover`)."""
        if self._lsn is None:
            raise CorruptData(JET_ERR_DATABASE_CORRUPTED, self.dest.name, "no snapshot was loaded")
        logs = self.work / "logs"
        make_dirs(logs)
        numbers: list[int] = []
        for g in generations:
            number = logfile.parse_log_name(g.name)
            if number is None:
                raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, g.name, f"{g.name} is not a log generation's name")
            self._copy(g, logs / g.name)
            numbers.append(number)
        if not numbers:
            return RecoveryReport(kind="hard", from_lsn=self._lsn, to_lsn=self._lsn)
        return hard_recover(self._db, logs, min(numbers), max(numbers), identity=identity,
                            until_lsn=until.lsn, until_us=until.time_us)

    def check_integrity(self) -> str:
        """SQLite's integrity check of the rebuilt file."""
        conn = connect_plain(self._db)
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()

    def finish(self) -> None:
        """fsync the rebuilt file and rename it onto ``dest``; the work directory goes."""
        sync_database(self._db)
        os.replace(self._db, self.dest)
        fsync_dir(self.dest.parent)
        self.abort()

    def abort(self) -> None:
        """Remove the work directory (idempotent)."""
        shutil.rmtree(self.work, ignore_errors=True)
