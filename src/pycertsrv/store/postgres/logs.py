"""The log and backup side of the PostgreSQL engine (a part of ``PgStore``): generations, roll, truncate,
checkpoint, health, and the backup streams (snapshot as a SQLite file, generations as ``edb`` files)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import E_INVALIDARG, CertSrvError, InvalidArgument, NotFound, NotWriter
from .. import archivemark, logfile
from ..health import Health
from ..interface import Generation
from ..sqlite.checkpoint import Checkpoint
from . import lease
from .connect import Fenced, as_certsrv, connect
from .exports import ExportedGeneration, PgSnapshot
from .lease import Lease
from .streams import PgGenerationStream, PgSnapshotStream, scratch_dir

if TYPE_CHECKING:
    from ..options import StoreOptions

RECONNECTING = "degraded: postgresql connection lost, reconnecting"


class PgLog:
    """Log management and backup streams (mixed into :class:`.engine.PgStore`)."""

    url: str
    subject: str
    identity: str
    name: str
    home: Path | None
    options: StoreOptions
    lease: Lease | None
    _write_lock: threading.RLock
    _cond: threading.Condition
    _writer: Any
    _gen: int
    _gen_first: int
    _appended_lsn: int
    _committed_lsn: int
    _recover: str | None

    if TYPE_CHECKING:
        def _check_open(self) -> None: ...
        def _check_writable(self) -> None: ...
        def _reader(self) -> Any: ...
        def _rows(self, query: str, params: Sequence[Any] = (), *, patient: bool = True
                  ) -> list[tuple[Any, ...]]: ...
        def _wait_seq(self, seq: int) -> None: ...
        def _quiesce(self) -> None: ...
        def _wait_applied_all(self) -> None: ...
        def _ensure_writer_locked(self) -> int: ...
        def _demote(self, error: CertSrvError, held: Lease | None) -> None: ...
        def _not_writer(self) -> NotWriter: ...
        def get(self, table: str, key: Any) -> dict[str, Any] | None: ...
        def _queue_roll(self) -> tuple[int, int]: ...

    # ---------------------------------------------------------------- log management

    def roll(self) -> int:
        """Close the current generation and start the next; returns the closed number."""
        self._check_writable()
        with self._write_lock:
            closed, seq = self._queue_roll()
        self._wait_seq(seq)
        return closed

    roll_log = roll

    def generations(self) -> list[Generation]:
        """Every generation still in the database, with LSN range and size, oldest first."""
        self._check_open()
        rows = self._rows(
            "SELECT g.gen, g.first_lsn, g.created_us, g.closed_us, count(r.lsn), coalesce(sum(length(r.payload)), 0),"
            " g.epoch FROM log_generation g LEFT JOIN log_record r ON r.gen = g.gen GROUP BY g.gen ORDER BY g.gen")
        out = []
        for gen, first, created, closed, n, nbytes, epoch in rows:
            size = logfile.HEADER_SIZE + int(nbytes) + int(n) * logfile.REC_SIZE
            out.append(Generation(int(gen), int(first), int(first) + int(n) - 1, int(created), size,
                                  closed is not None, int(epoch)))
        return out

    @property
    def current_generation(self) -> int:
        """Number of the generation being written."""
        return self._gen

    @property
    def log_position(self) -> tuple[int, int, int]:
        """``(generation being written, its first LSN, last LSN appended)``."""
        with self._write_lock:
            return self._gen, self._gen_first, self._appended_lsn

    @property
    def applied_lsn(self) -> int:
        """Highest LSN committed (log rows and row images commit together)."""
        return self._committed_lsn

    @property
    def circular_logging(self) -> bool:
        """Whether old generations are deleted automatically (no incrementals)."""
        return self.options.circular_logging

    def checkpoint(self) -> Checkpoint:
        """Where crash recovery would start: nothing to make durable (row images commit with their records),
        so every committed LSN is "checkpointed" and only the open generation is needed."""
        self._check_open()
        with self._write_lock:
            self._wait_applied_all()
            return Checkpoint(self._committed_lsn, self._gen, logfile.now_us())

    @property
    def last_checkpoint(self) -> Checkpoint:
        """Always the committed LSN (see :meth:`checkpoint`)."""
        return Checkpoint(self._committed_lsn, self._gen, logfile.now_us())

    def health(self) -> Health:
        """``ok`` (a standby too: see ``role``), or degraded while the writer reconnects after losing its server."""
        with self._cond:
            recovering = self._recover == "reconnect"
        if not recovering:
            return Health()
        return Health(RECONNECTING, f"{self.subject}: writes wait for a writable server (a failover?)",
                      None, 0, None, [], None)

    def log_space(self) -> dict[int, int]:
        """Bytes each kept generation takes (its exported ``edb`` size), by number."""
        return {g.generation: g.size for g in self.generations()}

    def truncate(self, below: int) -> list[int]:
        """Delete the log rows of generations below ``below`` (never the current one)."""
        self._check_writable()
        if below > self._gen:
            raise InvalidArgument(E_INVALIDARG, "truncate",
                                  f"generation {below:08X} is past the current one ({self._gen:08X})")
        if self.options.archiving:
            present = [g.generation for g in self.generations()]
            if present:  # issue 13: never delete a generation not yet archived
                below = min(below, archivemark.keep_floor(self, min(present)))
        with self._write_lock:
            self._ensure_writer_locked()
            self._quiesce()
            held = self.lease
            assert held is not None
            try:
                with self._cond:  # no commit can start while this transaction uses the connection
                    w = self._writer
                    try:
                        with w.transaction():
                            cur = w.cursor()
                            lease.check(cur, self.subject, held, logfile.now_us())
                            gens = [int(r[0]) for r in cur.execute(
                                "SELECT gen FROM log_generation WHERE gen < %s AND gen <> %s ORDER BY gen",
                                (below, self._gen)).fetchall()]
                            cur.execute("DELETE FROM log_record WHERE gen = ANY(%s)", (gens,))
                            cur.execute("DELETE FROM log_generation WHERE gen = ANY(%s)", (gens,))
                    except CertSrvError:
                        raise
                    except Exception as e:
                        raise as_certsrv(self.url, e) from None
            except Fenced as e:
                self._demote(e, held)
                raise self._not_writer() from None
        return gens

    truncate_logs = truncate

    # ---------------------------------------------------------------- reads

    def integrity_check(self) -> str:
        """``"ok"`` when the log is gapless, every CRC matches and the tables are at its last LSN."""
        from .exports import check_log

        return check_log(self._reader())

    def log_records(self, gen: int) -> Iterator[logfile.Record]:
        """The records of generation ``gen`` in LSN order (``offset`` is the position in its edb file)."""
        pos = logfile.HEADER_SIZE
        for lsn, ts, payload in self._rows(
                "SELECT lsn, ts_us, payload FROM log_record WHERE gen = %s ORDER BY lsn", (gen,)):
            yield logfile.Record(int(lsn), int(ts), bytes(payload), pos)
            pos += logfile.REC_SIZE + len(payload)

    @property
    def database_name(self) -> str:
        """The database file's name in a backup set (``<CA>.db``, as the SQLite engine names it)."""
        from ..sqlite import db_file_name  # the set's file name is the SQLite engine's (a set looks the same)

        return str(db_file_name(self.name))

    def snapshot(self, dest: Path, *, durable: bool = True) -> PgSnapshot:
        """A consistent copy of the database as a SQLite file (the SQLite engine's format)."""
        from .exports import snapshot_to_sqlite

        self._check_open()
        conn = connect(self.url)
        try:
            return snapshot_to_sqlite(conn, Path(dest), durable=durable)
        finally:
            conn.close()

    def open_snapshot(self) -> PgSnapshotStream:
        """The tables at one LSN as a SQLite file's bytes (one REPEATABLE READ transaction)."""
        import shutil

        d = scratch_dir(self.home)
        try:
            info = self.snapshot(d / self.database_name, durable=False)
            return PgSnapshotStream(self.database_name, info.path, info.lsn, info.generation)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def export_generation(self, gen: int, dest_dir: Path) -> Path:
        """Write generation ``gen`` as an ``edbXXXXXXXX.log`` file byte-compatible with the SQLite engine's."""
        return self._export(gen, Path(dest_dir), durable=True).path

    def _export(self, gen: int, dest_dir: Path, *, durable: bool) -> ExportedGeneration:
        from .exports import export_generation

        self._check_open()
        try:
            return export_generation(self._reader(), self.identity, gen, dest_dir, durable=durable)
        except CertSrvError:
            raise
        except Exception as e:
            raise as_certsrv(self.url, e) from None

    def open_generation(self, number: int) -> PgGenerationStream:
        """Generation ``number`` as its ``edb`` file's bytes; NotFound when no longer kept."""
        import shutil

        self._check_open()
        if not self._rows("SELECT 1 FROM log_generation WHERE gen = %s", (number,)):
            raise NotFound(None, logfile.log_name(number), "this log generation is no longer kept")
        d = scratch_dir(self.home)
        try:
            # A scratch copy, deleted when the stream closes: no fsync (durable=False). Its LSN range comes
            # from the export itself, which read every record (a listing taken before could be older).
            e = self._export(number, d, durable=False)
            return PgGenerationStream(e.path.name, e.path, number, e.first_lsn, e.last_lsn)
        finally:
            shutil.rmtree(d, ignore_errors=True)


