"""Log generations: file header, framed records, validation.

A generation file ``edbXXXXXXXX.log`` (8 hex digits) is a 64-byte header followed by records::

    header: magic "PCSLOG01", version u32, generation u32, created (µs since epoch) i64,
            database identity (16 bytes), first LSN u64, CRC32 of the preceding 48 bytes, padding
    record: payload length u32, CRC32 u32, LSN u64, time (µs since epoch) i64, payload

The record CRC covers length, LSN, time and payload, so a flipped bit anywhere is caught.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import JET_ERR_BAD_LOG_SIGNATURE, JET_ERR_LOG_FILE_CORRUPT, CorruptData

MAGIC = b"PCSLOG01"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIq16sQ")
HEADER_SIZE = 64
REC = struct.Struct("<IIQq")
MAX_RECORD = 64 << 20
NAME_RE = re.compile(r"^edb([0-9A-Fa-f]{8})\.log$")


def log_name(generation: int) -> str:
    """File name of a generation: ``edb`` + 8 hex digits + ``.log``."""
    return f"edb{generation:08X}.log"


def parse_log_name(name: str) -> int | None:
    """Generation number of a log file name, or None if it is not one."""
    m = NAME_RE.match(name)
    return int(m.group(1), 16) if m else None


def now_us() -> int:
    """Current UTC time in microseconds since the epoch."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


@dataclass(frozen=True)
class LogHeader:
    """The decoded header of a generation file."""

    generation: int
    identity: bytes
    created_us: int
    first_lsn: int

    def encode(self) -> bytes:
        """The 64-byte header."""
        body = HEADER.pack(MAGIC, FORMAT_VERSION, self.generation, self.created_us, self.identity,
                           self.first_lsn)
        return (body + struct.pack("<I", zlib.crc32(body))).ljust(HEADER_SIZE, b"\0")


def read_header(path: Path, identity: bytes | None = None) -> LogHeader:
    """Read and check a generation's header.

    :param path: the generation file.
    :param identity: when given, the database identity the log must carry.
    """
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, path.name, f"header truncated at offset {len(raw)}")
    body = raw[: HEADER.size]
    (crc,) = struct.unpack_from("<I", raw, HEADER.size)
    magic, version, gen, created, ident, first = HEADER.unpack(body)
    if magic != MAGIC or zlib.crc32(body) != crc:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, path.name,
                          "bad header at offset 0 (not a pycertsrv log generation)")
    if version != FORMAT_VERSION:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, path.name, f"log format version {version} is not supported")
    expected = parse_log_name(path.name)
    if expected is not None and expected != gen:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, path.name, f"header says generation {gen:08X}")
    if identity is not None and ident != identity:
        raise CorruptData(
            JET_ERR_BAD_LOG_SIGNATURE, path.name,
            f"log belongs to database {ident.hex()}, not {identity.hex()}",
        )
    return LogHeader(gen, ident, created, first)


def encode_record(lsn: int, ts_us: int, payload: bytes) -> bytes:
    """Frame one record."""
    head = struct.pack("<IQq", len(payload), lsn, ts_us)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return REC.pack(len(payload), crc, lsn, ts_us) + payload


@dataclass(frozen=True)
class Record:
    """One decoded record and where it sits."""

    lsn: int
    ts_us: int
    payload: bytes
    offset: int


@dataclass
class ScanResult:
    """What a scan of one generation found."""

    path: Path
    header: LogHeader
    records: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    last_ts_us: int | None = None
    end: int = HEADER_SIZE
    bad_offset: int | None = None
    bad_reason: str = ""
    bad_is_tail: bool = False
    size: int = 0


def iter_records(data: bytes, start: int = HEADER_SIZE) -> Iterator[Record | tuple[int, str, bool]]:
    """Yield records of a generation's bytes; a bad frame yields ``(offset, reason, is_tail)`` and stops.

    A frame is a torn *tail* when it runs past the end of the file or fails its CRC while being
    the last bytes of the file; a bad frame followed by more bytes is corruption in the middle.
    A frame that runs past the end while a whole valid record follows it is a damaged length
    field in the middle, not a torn tail: cutting there would drop committed records.
    """
    pos = start
    n = len(data)
    prev_lsn: int | None = None
    while pos < n:
        if n - pos < REC.size:
            yield (pos, f"partial record header ({n - pos} bytes)", True)
            return
        length, crc, lsn, ts = REC.unpack_from(data, pos)
        end = pos + REC.size + length
        if length > MAX_RECORD:
            yield (pos, f"record length {length} is implausible", False)
            return
        if end > n:
            later = _valid_record_after(data, pos, {lsn + 1} | ({prev_lsn + 2} if prev_lsn is not None else set()))
            if later is not None:
                yield (pos, f"record length {length} runs past end of file but a valid record follows at "
                            f"offset {later}", False)
            else:
                yield (pos, f"record runs past end of file ({end - n} bytes missing)", True)
            return
        payload = data[pos + REC.size : end]
        head = struct.pack("<IQq", length, lsn, ts)
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            yield (pos, f"checksum mismatch in record LSN {lsn}", end == n)
            return
        yield Record(lsn, ts, payload, pos)
        prev_lsn = lsn
        pos = end


def _valid_record_after(data: bytes, pos: int, lsns: set[int]) -> int | None:
    """Offset of a whole, checksum-valid record carrying one of ``lsns`` that starts after ``pos``."""
    n = len(data)
    for want in lsns:
        needle = struct.pack("<Q", want)
        i = data.find(needle, pos + 1 + 8)
        while i != -1:
            q = i - 8  # the LSN sits 8 bytes into a frame
            if q + REC.size <= n:
                length, crc, lsn, ts = REC.unpack_from(data, q)
                end = q + REC.size + length
                if length <= MAX_RECORD and end <= n:
                    head = struct.pack("<IQq", length, lsn, ts)
                    if zlib.crc32(data[q + REC.size : end], zlib.crc32(head)) == crc:
                        return q
            i = data.find(needle, i + 1)
    return None


def scan(path: Path, identity: bytes | None, *, keep: bool = False) -> tuple[ScanResult, list[Record]]:
    """Validate a whole generation; returns the summary and (when ``keep``) its records.

    LSNs must start at the header's first LSN and rise by one; a break is corruption.
    """
    header = read_header(path, identity)
    data = path.read_bytes()
    res = ScanResult(path, header, size=len(data))
    kept: list[Record] = []
    expect = header.first_lsn
    for item in iter_records(data):
        if isinstance(item, tuple):
            res.bad_offset, res.bad_reason, res.bad_is_tail = item
            break
        if item.lsn != expect:
            res.bad_offset, res.bad_reason, res.bad_is_tail = (
                item.offset, f"LSN {item.lsn} where {expect} was expected", False)
            break
        if res.first_lsn is None:
            res.first_lsn = item.lsn
        res.last_lsn = item.lsn
        res.last_ts_us = item.ts_us
        res.records += 1
        res.end = item.offset + REC.size + len(item.payload)
        expect += 1
        if keep:
            kept.append(item)
    return res, kept


def corrupt_error(res: ScanResult) -> CorruptData:
    """The error for a bad frame that may not be cut off."""
    return CorruptData(
        JET_ERR_LOG_FILE_CORRUPT, res.path.name, f"corrupt record at offset {res.bad_offset}: {res.bad_reason}"
    )


def create_generation(log_dir: Path, header: LogHeader) -> Path:
    """Create a new generation file durably (temp name, fsync, rename, fsync dir)."""
    from ..fsutil import fsync_dir

    final = log_dir / log_name(header.generation)
    if final.exists():
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, final.name, "generation already exists")
    tmp = log_dir / (final.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, header.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(log_dir)
    return final


def list_generations(log_dir: Path) -> dict[int, Path]:
    """Generation number → path of every log file in a directory (temp files ignored)."""
    out: dict[int, Path] = {}
    if not log_dir.is_dir():
        return out
    for p in log_dir.iterdir():
        g = parse_log_name(p.name)
        if g is not None:
            out[g] = p
    return dict(sorted(out.items()))
