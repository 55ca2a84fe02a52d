"""``certsrv verify-archive DEST`` (issue 13): check an archive and name the first bad file.

Per ``DEST/<identity>/<lineage>/``: every generation's header carries that identity, every record's
CRC holds (archived generations are closed: no torn tail is acceptable), generation numbers have no
gap, LSNs continue from one generation to the next, no record names another lineage (each watermark
record the shipper writes names its lineage, the first generation after a restore names the new
one), and the newest archived record's age is reported (freshness).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    ERROR_FILE_NOT_FOUND,
    JET_ERR_BAD_LOG_SIGNATURE,
    JET_ERR_LOG_FILE_CORRUPT,
    JET_ERR_MISSING_LOG_FILE,
    CertSrvError,
    CorruptData,
    NotFound,
)
from ..store import archivemark, logfile

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class ArchivedGeneration:
    """One checked archive file."""

    generation: int
    path: Path
    first_lsn: int
    last_lsn: int  # first_lsn - 1 when empty
    last_ts_us: int | None
    created_us: int


@dataclass
class Chain:
    """One lineage of one CA in the archive, as far as it checks out."""

    identity: str
    lineage: str
    directory: Path
    generations: list[ArchivedGeneration] = field(default_factory=list)
    error: CorruptData | None = None

    @property
    def newest_ts_us(self) -> int | None:
        """Time of the newest archived record (or of the newest generation's creation)."""
        for g in reversed(self.generations):
            if g.last_ts_us is not None:
                return g.last_ts_us
        return self.generations[-1].created_us if self.generations else None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The chain as plain data."""
        now = time.time() if now is None else now
        newest = self.newest_ts_us
        gens = self.generations
        return {
            "identity": self.identity, "lineage": self.lineage, "directory": str(self.directory),
            "generations": len(gens),
            "first": logfile.log_name(gens[0].generation) if gens else None,
            "last": logfile.log_name(gens[-1].generation) if gens else None,
            "first_lsn": gens[0].first_lsn if gens else None, "last_lsn": gens[-1].last_lsn if gens else None,
            "newest_record": logfile.us_to_datetime(newest).isoformat() if newest is not None else None,
            "age_seconds": round(max(0.0, now - newest / 1e6), 3) if newest is not None else None,
            "ok": self.error is None, "error": str(self.error) if self.error is not None else None,
            "bad_file": self.error.function if self.error is not None else None,
        }


def _check_lineage_records(path: Path, lineage: str, records: list[logfile.Record]) -> None:
    for r in records:
        try:
            ops = logfile.decode_payload(r.payload)
        except ValueError as e:
            raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, str(path), f"record LSN {r.lsn} does not decode: {e}") from None
        for table, kind, values in ops:
            if table != "setting" or kind != "p" or len(values) < 2:
                continue
            name, value = values[0], str(values[1])
            named = (value.partition(":")[0] if name == archivemark.SETTING_WATERMARK
                     else value if name == archivemark.SETTING_LINEAGE else None)
            if named is not None and named != lineage:
                raise CorruptData(JET_ERR_BAD_LOG_SIGNATURE, str(path),
                                  f"record LSN {r.lsn} belongs to lineage {named}, not {lineage} (a generation of "
                                  "another history was put in this directory)")


def check_file(path: Path, identity: str, lineage: str) -> ArchivedGeneration:
    """Check one archived generation fully (identity, every CRC, lineage); CorruptData names it."""
    try:
        res, recs = logfile.scan(path, bytes.fromhex(identity), keep=True)
    except CorruptData as e:
        raise CorruptData(e.hresult, str(path), e.message) from None
    except OSError as e:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, str(path), f"cannot read: {e.strerror or e}") from None
    if res.bad_offset is not None:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, str(path),
                          f"bad record at offset {res.bad_offset}: {res.bad_reason}")
    _check_lineage_records(path, lineage, recs)
    h = res.header
    last = res.last_lsn if res.last_lsn is not None else h.first_lsn - 1
    return ArchivedGeneration(h.generation, path, h.first_lsn, last, res.last_ts_us, h.created_us)


def check_chain(directory: Path, identity: str, lineage: str, *, low: int | None = None,
                high: int | None = None) -> Chain:
    """Check the generations of one lineage directory (from ``low`` to ``high`` when given).

    The chain holds the generations that checked out, up to the first problem (in ``error``).
    """
    chain = Chain(identity, lineage, directory)
    files = logfile.list_generations(directory)
    nums = [g for g in files if (low is None or g >= low) and (high is None or g <= high)]
    if not nums:
        return chain
    prev: ArchivedGeneration | None = None
    start = low if low is not None else nums[0]
    end = high if high is not None else nums[-1]
    try:
        for g in range(start, end + 1):
            if g not in files:
                raise CorruptData(JET_ERR_MISSING_LOG_FILE, str(directory / logfile.log_name(g)),
                                  f"generation {g:08X} is missing from the archive"
                                  + (f" (after {logfile.log_name(prev.generation)})" if prev else ""))
            cur = check_file(files[g], identity, lineage)
            if prev is not None and cur.first_lsn != prev.last_lsn + 1:
                raise CorruptData(JET_ERR_MISSING_LOG_FILE, str(files[g]),
                                  f"starts at LSN {cur.first_lsn} but {logfile.log_name(prev.generation)} ends at "
                                  f"LSN {prev.last_lsn}: records are missing between them")
            chain.generations.append(cur)
            prev = cur
    except CorruptData as e:
        chain.error = e
    return chain


def chains(dest: Path) -> list[Chain]:
    """Every ``<identity>/<lineage>`` directory under ``dest``, checked."""
    dest = Path(dest)
    if not dest.is_dir():
        raise NotFound(ERROR_FILE_NOT_FOUND, str(dest), "no such archive directory")
    out: list[Chain] = []
    for idir in sorted(p for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ldir in sorted(p for p in idir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (_HEX.match(idir.name) and _HEX.match(ldir.name)):
                continue
            out.append(check_chain(ldir, idir.name, ldir.name))
    return out


@dataclass
class ArchiveReport:
    """What :func:`verify_archive` found."""

    dest: Path
    chains: list[Chain]
    max_age: float | None = None
    checked_at: float = field(default_factory=time.time)

    @property
    def first_error(self) -> CertSrvError | None:
        """The first problem (a bad file, or a stale archive when ``max_age`` is set)."""
        for c in self.chains:
            if c.error is not None:
                return c.error
        if self.max_age is not None:
            for c in self.chains:
                newest = c.newest_ts_us
                if newest is not None and self.checked_at - newest / 1e6 > self.max_age:
                    last = c.generations[-1].path
                    return CorruptData(JET_ERR_MISSING_LOG_FILE, str(last),
                                       f"the newest archived record is {self.checked_at - newest / 1e6:.0f}s old "
                                       f"(more than --max-age {self.max_age:g}s): is the CA still shipping?")
        return None

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        err = self.first_error
        return {"dest": str(self.dest), "ok": err is None, "error": str(err) if err else None,
                "bad_file": err.function if err else None,
                "chains": [c.to_json(self.checked_at) for c in self.chains]}


def verify_archive(dest: Path | str, *, max_age: float | None = None) -> ArchiveReport:
    """Check every chain of an archive.

    :param dest: the archive directory.
    :param max_age: when given, a chain whose newest record is older than this many seconds is a problem.
    """
    return ArchiveReport(Path(dest), chains(Path(dest)), max_age)
