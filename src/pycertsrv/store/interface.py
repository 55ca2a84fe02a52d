"""The storage engine interface: what :class:`~pycertsrv.store.Store` needs from an engine, with its contract.

An engine keeps two things together, and always in step: the **redo log** (records numbered by LSN and
grouped in *generations*) and the **tables** the log's row images materialise (:mod:`.schema`). The log is
the source of truth; the tables are its applied state. Two engines implement it: SQLite (``store/sqlite/``:
edbXXXXXXXX.log files + a SQLite file in WAL mode) and PostgreSQL (issue 12: log rows + generation rows +
tables in one database). Nothing here names a path, a file descriptor, a PRAGMA or a SQL dialect, in the
manner of litestream's replica client: backup and restore see *generations* and *named byte streams*.

Vocabulary and invariants every engine keeps (the conformance suite, ``tests/store/test_engine_conformance.py``,
checks each one on every engine):

- **LSN**: a record's number. LSNs start at 1, follow commit order and have no gaps: if a reader can see
  LSN n, it can see every LSN below n (issue 12: a sequence gives neither, so one writer assigns them).
- **Record**: ``(lsn, time_us, crc32, payload)``; ``payload`` is :func:`.logfile.encode_payload` of the
  row images, byte-identical on every engine, so a generation exported by one engine replays on the other.
- **Generation**: a run of consecutive LSNs. Exactly one is open (being appended to); closed ones never
  change. Its byte form is an ``edbXXXXXXXX.log`` file (:mod:`.logfile`): header + framed records.
- **Applied state**: the tables as of the applied LSN. Reads see only committed, applied records, and a
  record's row images are all visible or none (one record = one transaction).
- **Snapshot**: the tables at exactly one LSN, as a SQLite database file of the same schema (the backup
  set's database file, whatever the engine). Its ``_meta.applied_lsn`` is that LSN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .logfile import Op
from .report import RecoveryReport

__all__ = [
    "ByteStream",
    "Commit",
    "Engine",
    "FileRange",
    "Generation",
    "GenerationStream",
    "Op",
    "RecoveryTarget",
    "SnapshotStream",
    "Until",
]

Where = Sequence[tuple[str, str, Any]]
"""Read filters: ``(column, op, value)``; op is one of ``= != < <= > >= like``, ``is null``, ``is not null``."""


@dataclass(frozen=True)
class Commit:
    """The result of :meth:`Engine.commit`.

    :param lsn: the LSN the record was given.
    :param applied: True when its row images are visible to reads; False when the record is durable
        (it survives a crash and is replayed) but the engine could not apply it yet (a degraded store,
        see :mod:`.health`); the engine applies it by itself later, in LSN order.
    """

    lsn: int
    applied: bool


@dataclass(frozen=True)
class Generation:
    """One log generation.

    :param generation: the generation number (``edbXXXXXXXX.log`` on every engine).
    :param first_lsn: the first LSN it holds (or will hold, for an empty open generation).
    :param last_lsn: its last LSN; ``first_lsn - 1`` when empty.
    :param created_us: when it was started (µs since the epoch, UTC).
    :param size: the bytes of its stream (:meth:`Engine.open_generation`), as of this listing.
    :param closed: closed generations never change again; only the newest one is open.
    :param epoch: the writer lease epoch its records were written under (issue 14: one epoch per generation,
        the backup set's lineage); always 0 on SQLite (one process, no lease).
    """

    generation: int
    first_lsn: int
    last_lsn: int
    created_us: int
    size: int
    closed: bool
    epoch: int = 0


@dataclass(frozen=True)
class Until:
    """Where a point-in-time recovery stops (``--until``); both None = replay everything given.

    :param lsn: apply records up to and including this LSN.
    :param time_us: apply records stamped at or before this time (µs since the epoch, UTC).
    """

    lsn: int | None = None
    time_us: int | None = None


EVERYTHING = Until()
"""No stop: replay every record given."""


@dataclass(frozen=True)
class FileRange:
    """An optional zero-copy view of a stream range: ``prefix`` then ``count`` bytes of ``fd`` at ``offset``.

    Only an engine whose stream bytes lie in a local file gives one (SQLite); it is a transport fast path
    (sendfile), never a location: the descriptor is valid until ``release()`` and must not be closed,
    reopened or stat'ed by the caller. Engines that cannot give one return None and the caller uses
    :meth:`ByteStream.read`.
    """

    prefix: bytes
    fd: int
    offset: int
    count: int
    release: Callable[[], None]


@runtime_checkable
class ByteStream(Protocol):
    """A named, sized, immutable run of bytes, read by range. Backup and archive read nothing else.

    Contract: ``size`` is fixed when the stream is opened; ``read(offset, n)`` returns exactly
    ``min(n, size - offset)`` bytes (b"" at or past the end) and the same bytes every time, whatever
    commits run meanwhile; reads may come from any thread, in any order. ``close()`` releases what
    the stream holds (a pinned read transaction, a scratch copy); a second close does nothing; reads
    after close raise. A stream is not tied to the store's lifetime beyond what each engine documents.
    """

    name: str
    size: int

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset .. offset+n`` (fewer only at the end)."""
        ...

    def file_range(self, offset: int, n: int) -> FileRange | None:
        """The same bytes as :meth:`read` for a zero-copy sender, or None (see :class:`FileRange`)."""
        ...

    def close(self) -> None:
        """Release the stream (idempotent)."""
        ...


@runtime_checkable
class SnapshotStream(ByteStream, Protocol):
    """The tables at one LSN, as the bytes of a SQLite database file of the same schema (rollback journal).

    Contract: every record with LSN <= ``lsn`` is in it and none above (commits that run while it is read
    do not leak in); ``generation`` is the generation holding ``lsn + 1``, where an incremental chain
    taken after this snapshot starts. ``name`` is the database file's name (``<CA>.db``).
    """

    lsn: int
    generation: int


@runtime_checkable
class GenerationStream(ByteStream, Protocol):
    """One generation as the bytes of its ``edbXXXXXXXX.log`` file (``name``), byte-compatible across engines.

    Contract: the bytes are what a restore replays (:mod:`.logfile` format: header with the database
    identity, then CRC-framed records ``first_lsn..last_lsn`` in order). A closed generation's stream is
    its whole, final content; the open generation's stream holds the records appended when it was opened, made durable.
    """

    generation: int
    first_lsn: int
    last_lsn: int


class Engine(Protocol):
    """One open CA database: the log and the tables, owned by this process alone (one writer).

    Opening runs **soft recovery** (crash recovery): every record durable in the log and not yet applied is
    applied, a torn tail (a record cut by the crash, never acknowledged) is discarded, and the result is
    reported in ``recovery``. After open, the tables hold every acknowledged commit.
    """

    name: str
    """The CA name the database was created with."""
    identity: str
    """The database identity (hex), stamped in every generation header; restore checks it."""
    recovery: RecoveryReport
    """What soft recovery at open did."""

    @property
    def database_name(self) -> str:
        """The database file's name in a backup set (``<CA>.db``), the name of :meth:`open_snapshot`'s stream."""
        ...

    # -- writes
    def commit(self, ops: Sequence[Op]) -> Commit:
        """Append one record holding ``ops`` (row images: put = whole row, delete = key) and apply it.

        Durability: when it returns, the record is durable (fsync'ed on SQLite; committed on PostgreSQL)
        and survives a crash or power loss; a crash before it returns may keep or lose it, never half of it.
        Ordering: LSNs follow the order commits become durable, with no gaps. Concurrent callers may share
        one flush (group commit). Raises :class:`~pycertsrv.errors.StorageError` when the record was not
        made durable (nothing is acknowledged then) and refuses while the store is failed or degraded.
        """
        ...

    # -- reads: applied state only (see the module docstring)
    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key ``key`` (a scalar or a tuple), or None."""
        ...

    def select(self, table: str, where: Where = (), *, order_by: Sequence[str] = (),
               limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Rows matching every filter, ordered by ``order_by`` (``-col`` descending); one consistent view."""
        ...

    def count(self, table: str, where: Where = ()) -> int:
        """Number of rows matching the filters."""
        ...

    def max_value(self, table: str, column: str) -> Any:
        """Largest value of a column; None for an empty table."""
        ...

    def serials_in_use(self, serials: Sequence[str]) -> frozenset[str]:
        """Which of ``serials`` (the database's serial text) a ``request`` row holds: the issuer's check that a
        serial is unused (RFC 5280 §4.1.2.2), one indexed query for a whole batch of issuances."""
        ...

    # -- the log
    def generations(self) -> list[Generation]:
        """Every generation still kept, oldest first; the last one is the open one."""
        ...

    def roll(self) -> int:
        """Close the open generation (durable, immutable from now on), start the next; returns the closed number.

        Every record acknowledged before the call is in a generation <= the returned number.
        """
        ...

    def truncate(self, below_generation: int) -> list[int]:
        """Delete generations numbered below ``below_generation``; returns the numbers deleted.

        Refused when crash recovery still needs one of them (past the checkpoint); with archiving on, a
        generation not yet archived is kept. The open generation is never deleted.
        """
        ...

    # -- backup: named byte streams, no locations
    def open_snapshot(self) -> SnapshotStream:
        """The tables at one LSN (the applied LSN of the moment), without stopping writers. Close it."""
        ...

    def open_generation(self, number: int) -> GenerationStream:
        """Generation ``number``'s bytes; :class:`~pycertsrv.errors.NotFound` when it is no longer kept."""
        ...

    # -- health
    def integrity_check(self) -> str:
        """The tables' integrity check: ``"ok"`` when sound, else what is wrong."""
        ...

    def close(self) -> None:
        """Make the applied state durable (checkpoint) and release the database; nothing then needs replay."""
        ...


class RecoveryTarget(Protocol):
    """Where hard recovery (a restore) rebuilds a database: load a snapshot, replay generations, check.

    Contract: nothing is visible to a CA until :meth:`finish` returns; a crash or an error before that
    leaves the target to be discarded and the restore started again from the set (never a half-restored
    database serving requests). Calls come in this order: ``load_snapshot`` once, ``replay`` once,
    ``check_integrity``, then ``finish`` (or ``abort`` at any point).
    """

    def load_snapshot(self, snapshot: ByteStream) -> int:
        """Take the snapshot's bytes (a SQLite database file of the schema) as the starting state; returns its LSN."""
        ...

    def replay(self, generations: Sequence[ByteStream], until: Until = EVERYTHING,
               *, identity: str | None = None) -> RecoveryReport:
        """Apply the generations' records above the snapshot's LSN, in order, stopping at ``until``.

        The generations must be consecutive and carry ``identity`` (the snapshot's own by default): a gap,
        a foreign generation or a damaged record refuses with :class:`~pycertsrv.errors.CorruptData`.
        """
        ...

    def check_integrity(self) -> str:
        """The rebuilt tables' integrity check (``"ok"`` when sound)."""
        ...

    def finish(self) -> None:
        """Make the rebuilt database durable and hand it over; after this the CA may open it."""
        ...

    def abort(self) -> None:
        """Discard everything written to the target (idempotent)."""
        ...
