"""Log generations: file header, framed records, record payloads, validation.

Log format version 2 (all integers little-endian; version 1 logs are refused by the header check).

A generation file ``edbXXXXXXXX.log`` (8 hex digits) is a 64-byte header followed by records::

    header: magic "PCSLOG01", version u32 (= 2), generation u32, created (µs since epoch) i64,
            database identity (16 bytes), first LSN u64, CRC32 of the preceding 48 bytes,
            preallocated size u64 (0: none), CRC32 of that size field
    record: CRC32 u32, payload length u32, LSN u64, time (µs since epoch) i64, payload

The record CRC covers bytes 4 to the end of the record (length, LSN, time and payload: one contiguous
span), so a flipped bit anywhere in a record is caught. LSNs rise by one from the header's first LSN.

The generation being written is preallocated (``fallocate`` to the log size, recorded in the header):
appends then neither allocate blocks nor grow the file, which makes their ``fdatasync`` cheaper (on this
project's ext4 VM the median append + fdatasync of 1 KiB went from 170-350 µs to 125-170 µs). The
records end where a zero frame starts; a file still exactly its preallocated size with nothing but
zeroes after the last record simply has room left. Any other zeroes at the end are a torn tail (see
:func:`_bad_frame`). A closed generation is cut to its last record when the log rolls.

A payload is one committed transaction: its row operations, nothing else::

    payload := op count u16 (at least 1) | op[count]
    op    := table u8 | kind u8 | count u8 | tag[count] u8 | fixed | var
    table := 0 request, 1 attribute, 2 extension, 3 crl, 4 backup_history, 5 setting  (TABLE_CODES;
             numbers are never reused: a new table takes the next one)
    kind  := 0 put    (count = the table's column count; the values are the whole row in schema order)
           | 1 delete (count = the table's key column count; the values are the primary key)
    tag   := 0 NULL | 1 INTEGER (i64) | 2 REAL (f64) | 3 TEXT (UTF-8) | 4 BLOB
    fixed := for each value in order: INTEGER i64, REAL f64, TEXT/BLOB u32 byte length, NULL nothing
    var   := the bytes of each TEXT and BLOB value in order, with the lengths given in ``fixed``

Rows are whole images (never deltas), so replaying a record twice gives the same state. Putting the
tags and all fixed-size fields before the variable bytes lets one ``struct`` call read every number
and length of an operation; the decoder for a tag sequence is built once and cached (:func:`decode_payload`).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import JET_ERR_BAD_LOG_SIGNATURE, JET_ERR_LOG_FILE_CORRUPT, CorruptData
from .schema import TABLES

MAGIC = b"PCSLOG01"
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sIIq16sQ")
HEADER_SIZE = 64
REC = struct.Struct("<IIQq")  # CRC32, payload length, LSN, time
REC_SIZE = REC.size
LSN_OFFSET = 8  # where the LSN sits in a frame
MAX_RECORD = 64 << 20
NAME_RE = re.compile(r"^edb([0-9A-Fa-f]{8})\.log$")

# Payload codes (see the module docstring). The order of TABLE_CODES is part of the format.
TABLE_CODES: tuple[str, ...] = ("request", "attribute", "extension", "crl", "backup_history", "setting")
TABLE_CODE = {name: i for i, name in enumerate(TABLE_CODES)}
KIND_CODES = ("p", "d")
KIND_CODE = {"p": 0, "d": 1}
T_NULL, T_INT, T_REAL, T_TEXT, T_BLOB = 0, 1, 2, 3, 4
_FIXED_FMT = {T_INT: "q", T_REAL: "d", T_TEXT: "I", T_BLOB: "I"}

# An operation as the engine handles it: (table name, "p" | "d", values).
Op = tuple[str, str, list[Any]]


def log_name(generation: int) -> str:
    """File name of a generation: ``edb`` + 8 hex digits + ``.log``."""
    return f"edb{generation:08X}.log"


def parse_log_name(name: str) -> int | None:
    """Generation number of a log file name, or None if it is not one."""
    m = NAME_RE.match(name)
    return int(m.group(1), 16) if m else None


def now_us() -> int:
    """Current UTC time in microseconds since the epoch."""
    return time.time_ns() // 1000


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


# ---------------------------------------------------------------- payloads


if set(TABLE_CODES) != set(TABLES):  # a new table needs its code here before it can be logged
    raise RuntimeError(f"log table codes {TABLE_CODES} do not match the schema's tables {sorted(TABLES)}")
# Per table code: (column count, key column count), so an operation of the wrong shape is refused.
_ARITY = [(len(TABLES[name].columns), len(TABLES[name].key)) for name in TABLE_CODES]

_FIXED: dict[bytes, struct.Struct] = {}


def _fixed_struct(tags: bytes) -> struct.Struct:
    s = _FIXED.get(tags)
    if s is None:
        if len(_FIXED) > 4096:
            _FIXED.clear()  # bounded: rows of many shapes cannot grow it without limit
        s = _FIXED[tags] = struct.Struct("<" + "".join(_FIXED_FMT[t] for t in tags if t))
    return s


_TAG_OF_TYPE: dict[type, int] = {type(None): T_NULL, int: T_INT, float: T_REAL, str: T_TEXT, bytes: T_BLOB}
Encoder = Callable[[Sequence[Any]], bytes]
_ENCODERS: dict[bytes, Encoder] = {}


def _normalise(tname: str, values: Sequence[Any]) -> list[Any]:
    """Values of other types as one of the five the format stores (bool and int subclasses as int, ...)."""
    out: list[Any] = []
    for v in values:
        if v is None or type(v) in _TAG_OF_TYPE:
            out.append(v)
        elif isinstance(v, int):
            out.append(int(v))  # SQLite stores bool as the integer
        elif isinstance(v, float):
            out.append(float(v))
        elif isinstance(v, str):
            out.append(str(v))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            out.append(bytes(v))
        else:
            raise TypeError(f"cannot store a {type(v).__name__} value in table {tname}")
    return out


def _make_encoder(head: bytes) -> Encoder:
    """A function ``values -> the operation's bytes`` for operations with this head (table, kind, count, tags).

    Generated like the decoders (see :func:`_make_decoder`), for the commit path.
    """
    tags = head[3:]
    s = _fixed_struct(tags)
    lines = ["def enc(v):"]
    fixed: list[str] = []
    var: list[str] = []
    for i, t in enumerate(tags):
        if t == T_TEXT:
            lines.append(f"    t{i} = v[{i}].encode()")
            fixed.append(f"len(t{i})")
            var.append(f"t{i}")
        elif t == T_BLOB:
            lines.append(f"    t{i} = v[{i}]")
            fixed.append(f"len(t{i})")
            var.append(f"t{i}")
        elif t != T_NULL:
            fixed.append(f"v[{i}]")
    lines.append(f"    return b''.join((HEAD, pack({', '.join(fixed)}), {''.join(x + ', ' for x in var)}))")
    ns: dict[str, Any] = {"pack": s.pack, "HEAD": head}
    exec("\n".join(lines), ns)  # source made of constants, see _make_decoder
    fn: Encoder = ns["enc"]
    if len(_ENCODERS) > 4096:
        _ENCODERS.clear()
    _ENCODERS[head] = fn
    return fn


def encode_payload(ops: Sequence[Op]) -> bytes:
    """Serialise a transaction's operations ``(table, "p" | "d", values)`` (format in the module docstring).

    :param ops: the operations; values are None, int (64-bit), float, str or bytes-like.
    """
    if not ops or len(ops) > 0xFFFF:
        raise ValueError(f"a record holds 1 to 65535 operations, not {len(ops)}")
    out: list[bytes] = [struct.pack("<H", len(ops))]
    by_types = _BY_TYPES
    for tname, kind, values in ops:
        key = (tname, kind, *map(type, values))  # found without working out its head: issue 15, -1/3 CPU
        enc = by_types.get(key)
        if enc is None:
            values, enc, exact = _encoder_for(tname, kind, values)
            if exact and len(by_types) < 4096:  # converted values (bool, bytearray ...): not by their types
                by_types[key] = enc
        try:
            out.append(enc(values))
        except (struct.error, UnicodeEncodeError) as e:
            raise ValueError(f"a value for table {tname} cannot be stored: {e}") from None
    return b"".join(out)


_BY_TYPES: dict[tuple[Any, ...], Encoder] = {}


def _encoder_for(tname: str, kind: str, values: list[Any]) -> tuple[list[Any], Encoder, bool]:
    """``(values as stored, their encoder, whether the values were stored as given)`` for one operation."""
    tag_of = _TAG_OF_TYPE.__getitem__
    exact = True
    try:
        tags = bytes(map(tag_of, map(type, values)))
    except KeyError:
        values, exact = _normalise(tname, values), False
        tags = bytes(map(tag_of, map(type, values)))
    if len(tags) > 255:
        raise ValueError(f"{len(tags)} values in one operation on {tname}")
    head = bytes((TABLE_CODE[tname], KIND_CODE[kind], len(tags))) + tags
    return values, _ENCODERS.get(head) or _make_encoder(head), exact


Decoder = Callable[[Any, int], tuple[Op, int]]
_DECODERS: dict[bytes, Decoder] = {}


def _make_decoder(head: bytes) -> Decoder:
    """A function ``(buffer, pos after head) -> (op, pos after op)`` for operations starting with ``head``.

    ``head`` is an operation's table, kind, count and tags. The function is generated as straight-line
    code (one ``unpack_from`` for every number and length, then one slice per TEXT/BLOB value) and
    cached per head: rows of one table and shape share it, and a per-value loop costs about twice
    as much. Its source is built only from our own constant snippets, chosen by codes checked here.
    """
    tcode, kcode, n = head[0], head[1], head[2]
    tags = head[3:]
    if tcode >= len(TABLE_CODES) or kcode >= len(KIND_CODES):
        raise ValueError(f"unknown table code {tcode} or operation code {kcode}")
    tname, kind = TABLE_CODES[tcode], KIND_CODES[kcode]
    if len(tags) != n or n != _ARITY[tcode][kcode]:
        raise ValueError(f"{n} values for a {kind!r} operation on {tname}")
    for t in tags:
        if t > T_BLOB:
            raise ValueError(f"unknown value tag {t}")
    s = _fixed_struct(tags)
    names = [f"v{i}" for i, t in enumerate(tags) if t]
    lines = ["def dec(b, p):"]
    if names:
        lines.append(f"    {', '.join(names)}, = unpack_from(b, p)")
        lines.append(f"    p += {s.size}")
    for i, t in enumerate(tags):
        if t in (T_TEXT, T_BLOB):
            lines.append(f"    e = p + v{i}")
            lines.append(f"    v{i} = b[p:e]" + (".decode()" if t == T_TEXT else ""))
            lines.append("    p = e")
    values = ", ".join(f"v{i}" if t else "None" for i, t in enumerate(tags))
    lines.append(f"    return ({tname!r}, {kind!r}, [{values}]), p")
    ns: dict[str, Any] = {"unpack_from": s.unpack_from}
    exec("\n".join(lines), ns)  # source made of constants, see the docstring
    fn: Decoder = ns["dec"]
    if len(_DECODERS) > 4096:
        _DECODERS.clear()  # bounded: rows of many shapes cannot grow it without limit
    _DECODERS[head] = fn
    return fn


def decode_payload(buf: Any, pos: int = 0, end: int | None = None) -> list[Op]:
    """Decode the operations of a payload held in ``buf[pos:end]`` (bytes or mmap).

    Raises ValueError when the bytes do not form valid operations of known tables ending exactly at ``end``.
    """
    if end is None:
        end = len(buf)
    if end - pos < 2:
        raise ValueError("empty payload")
    ops: list[Op] = []
    decoders = _DECODERS
    try:
        count = buf[pos] | buf[pos + 1] << 8
        pos += 2
        for _ in range(count):
            p = pos + 3 + buf[pos + 2]
            head = buf[pos:p]
            op, pos = (decoders.get(head) or _make_decoder(head))(buf, p)
            ops.append(op)
    except IndexError:
        raise ValueError(f"payload cut short at offset {pos}") from None
    except struct.error as e:
        raise ValueError(f"payload cut short: {e}") from None
    if pos != end or not ops:
        raise ValueError(f"{len(ops)} operations end at offset {pos}, not at the payload's end {end}")
    return ops


# ---------------------------------------------------------------- header


PREALLOC = struct.Struct("<Q")  # at offset HEADER.size + 4, followed by its own CRC32


@dataclass(frozen=True)
class LogHeader:
    """The decoded header of a generation file (``prealloc``: the size it was preallocated to, or 0)."""

    generation: int
    identity: bytes
    created_us: int
    first_lsn: int
    prealloc: int = 0

    def encode(self) -> bytes:
        """The 64-byte header."""
        body = HEADER.pack(MAGIC, FORMAT_VERSION, self.generation, self.created_us, self.identity,
                           self.first_lsn)
        size = PREALLOC.pack(self.prealloc)
        out = body + struct.pack("<I", zlib.crc32(body)) + size + struct.pack("<I", zlib.crc32(size))
        assert len(out) == HEADER_SIZE
        return out


def parse_header(raw: bytes, name: str, identity: bytes | None = None) -> LogHeader:
    """Check and decode the first 64 bytes of generation file ``name``.

    :param raw: the file's first bytes.
    :param name: the file name (errors name it; its generation number must match the header's).
    :param identity: when given, the database identity the log must carry.
    """
    if len(raw) < HEADER_SIZE:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, name, f"header truncated at offset {len(raw)}")
    body = raw[: HEADER.size]
    (crc,) = struct.unpack_from("<I", raw, HEADER.size)
    magic, version, gen, created, ident, first = HEADER.unpack(body)
    if magic != MAGIC or zlib.crc32(body) != crc:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, name, "bad header at offset 0 (not a pycertsrv log generation)")
    if version != FORMAT_VERSION:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, name,
                          f"log format version {version} is not supported (this pycertsrv reads version "
                          f"{FORMAT_VERSION} only; the log was written by another release)")
    expected = parse_log_name(name)
    if expected is not None and expected != gen:
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, name, f"header says generation {gen:08X}")
    if identity is not None and ident != identity:
        raise CorruptData(
            JET_ERR_BAD_LOG_SIGNATURE, name,
            f"log belongs to database {ident.hex()}, not {identity.hex()}",
        )
    at = HEADER.size + 4
    size_raw = raw[at : at + PREALLOC.size]
    (size_crc,) = struct.unpack_from("<I", raw, at + PREALLOC.size)
    # A damaged size only changes how zeroes after the last record are reported (cut as a torn tail).
    prealloc = PREALLOC.unpack(size_raw)[0] if zlib.crc32(size_raw) == size_crc else 0
    return LogHeader(gen, ident, created, first, prealloc)


def read_header(path: Path, identity: bytes | None = None) -> LogHeader:
    """Read and check a generation's header.

    :param path: the generation file.
    :param identity: when given, the database identity the log must carry.
    """
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    return parse_header(raw, path.name, identity)


# ---------------------------------------------------------------- records


def encode_record(lsn: int, ts_us: int, payload: bytes) -> bytes:
    """Frame one record."""
    rest = struct.pack("<IQq", len(payload), lsn, ts_us) + payload
    return struct.pack("<I", zlib.crc32(rest)) + rest


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
    # Damaged records stepped over because they were already applied (see scan's ``applied``), and
    # where the first whole record after the last of them starts (the apply pass starts there).
    damaged: list[dict[str, Any]] = field(default_factory=list)
    resume_offset: int = HEADER_SIZE


def _all_zero(data: Any, start: int, end: int) -> bool:
    rest = bytes(data[start:end])
    return rest.count(0) == len(rest)


def _bad_frame(data: Any, pos: int, prev_lsn: int | None) -> tuple[int, str, bool]:
    """Classify the frame at ``pos`` that failed (``(offset, reason, is_tail)``).

    A torn *tail* is what an interrupted append leaves at the end of the file: a frame that runs
    past the end, a frame that fails its CRC with nothing but zeroes after it, or an all-zero
    remainder. Zeroes count as nothing: after a power loss a file may have been extended (its size
    made durable) without the appended data, which then reads back as zeroes. A bad frame followed
    by non-zero bytes is corruption in the middle. A frame that runs past the end while a whole
    valid record follows it is a damaged length field in the middle, not a torn tail: cutting there
    would drop committed records.
    """
    n = len(data)
    if _all_zero(data, pos, n):
        return pos, f"zero-filled tail ({n - pos} bytes of zeroes)", True
    if n - pos < REC_SIZE:
        return pos, f"partial record header ({n - pos} bytes)", True
    _, length, lsn, _ = REC.unpack_from(data, pos)
    end = pos + REC_SIZE + length
    if length > MAX_RECORD:
        return pos, f"record length {length} is implausible", False
    if end > n:
        later = _valid_record_after(data, pos, {lsn + 1} | ({prev_lsn + 2} if prev_lsn is not None else set()))
        if later is not None:
            return pos, f"record length {length} runs past end of file but a valid record follows at offset {later}", \
                False
        return pos, f"record runs past end of file ({end - n} bytes missing)", True
    return pos, f"checksum mismatch in record LSN {lsn}", _all_zero(data, end, n)


def iter_records(data: Any, start: int = HEADER_SIZE) -> Iterator[Record | tuple[int, str, bool]]:
    """Yield records of a generation's bytes; a bad frame yields ``(offset, reason, is_tail)`` and stops.

    See :func:`_bad_frame` for what counts as a torn tail.
    """
    pos = start
    n = len(data)
    prev_lsn: int | None = None
    with memoryview(data) as mv:
        while pos < n:
            if n - pos < REC_SIZE:
                yield _bad_frame(data, pos, prev_lsn)
                return
            crc, length, lsn, ts = REC.unpack_from(data, pos)
            end = pos + REC_SIZE + length
            if length > MAX_RECORD or end > n or zlib.crc32(mv[pos + 4 : end]) != crc:
                yield _bad_frame(data, pos, prev_lsn)
                return
            yield Record(lsn, ts, bytes(mv[pos + REC_SIZE : end]), pos)
            prev_lsn = lsn
            pos = end


def _valid_record_after(data: Any, pos: int, lsns: set[int]) -> int | None:
    """Offset of a whole, checksum-valid record carrying one of ``lsns`` that starts after ``pos``."""
    n = len(data)
    for want in lsns:
        needle = struct.pack("<Q", want)
        i: int = data.find(needle, pos + 1 + LSN_OFFSET)
        while i != -1:
            q = i - LSN_OFFSET
            if q + REC_SIZE <= n:
                crc, length, _, _ = REC.unpack_from(data, q)
                end = q + REC_SIZE + length
                if length <= MAX_RECORD and end <= n and zlib.crc32(data[q + 4 : end]) == crc:
                    return q
            i = data.find(needle, i + 1)
    return None


class MappedLog:
    """A generation file's bytes, memory-mapped read-only (``with MappedLog(path) as data: ...``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self.data: Any = b""

    def __enter__(self) -> Any:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size == 0:
                return b""
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.data = self._map
        return self._map

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def scan(path: Path, identity: bytes | None, *, keep: bool = False,
         applied: int | None = None) -> tuple[ScanResult, list[Record]]:
    """Validate a whole generation; returns the summary and (when ``keep``) its records.

    LSNs must start at the header's first LSN and rise by one; a break is corruption.

    :param applied: the LSN the database already contains. A damaged record at or below it is not
        needed by any recovery of this database: it is stepped over (listed in ``damaged``) when the
        whole record that follows it can be found (see :func:`_resync`), instead of ending the scan.
    """
    with MappedLog(path) as data:
        header = parse_header(bytes(data[:HEADER_SIZE]), path.name, identity)
        return _scan_data(path, header, data, keep, applied)


def _valid_at(data: Any, pos: int, lsn: int) -> bool:
    """Whether a whole, checksum-valid record carrying ``lsn`` starts at ``pos``."""
    n = len(data)
    if n - pos < REC_SIZE:
        return False
    crc, length, got, _ = REC.unpack_from(data, pos)
    end = pos + REC_SIZE + length
    return bool(got == lsn) and length <= MAX_RECORD and end <= n and zlib.crc32(data[pos + 4 : end]) == crc


def _resync(data: Any, pos: int, expect: int, applied: int) -> tuple[int, int] | None:
    """Where the records resume after damaged ones starting at ``pos`` (record ``expect``, at most ``applied``).

    Returns ``(offset, lsn)`` of the next whole record, or of the end of the records (``applied + 1``
    with only zeroes after), or None when it cannot be found safely: only records up to ``applied``
    may be stepped over, and the first one after them must be whole and carry the next LSN.
    """
    n = len(data)
    if n - pos >= REC_SIZE:
        _, length, _, _ = REC.unpack_from(data, pos)
        end = pos + REC_SIZE + length
        # The damaged frame's own length, when it still points at the next record (damage in the payload).
        if length <= MAX_RECORD and end <= n:
            if _valid_at(data, end, expect + 1):
                return end, expect + 1
            if expect == applied and _all_zero(data, end, n):
                return end, expect + 1
    for want in range(expect + 1, min(applied + 1, expect + 64) + 1):  # a damaged length: search by LSN
        q = _valid_record_after(data, pos, {want})
        if q is not None:
            return q, want
    return None


def _scan_data(path: Path, header: LogHeader, data: Any, keep: bool,
               applied: int | None = None) -> tuple[ScanResult, list[Record]]:
    n = len(data)
    res = ScanResult(path, header, size=n)
    kept: list[Record] = []
    expect = header.first_lsn
    pos = HEADER_SIZE
    unpack = REC.unpack_from
    crc32 = zlib.crc32
    ts = 0
    with memoryview(data) as mv:
        while pos < n:
            if n - pos < REC_SIZE:
                break
            crc, length, lsn, ts = unpack(data, pos)
            end = pos + REC_SIZE + length
            if length > MAX_RECORD or end > n or crc32(mv[pos + 4 : end]) != crc:
                if applied is not None and expect <= applied and not _all_zero(data, pos, n):
                    found = _resync(data, pos, expect, applied)
                    if found is not None:
                        reason = _bad_frame(data, pos, expect - 1 if expect > header.first_lsn else None)[1]
                        res.damaged.append({"file": path.name, "offset": pos, "lsn": expect,
                                            "lsns": [expect, found[1] - 1], "reason": reason})
                        pos, expect = found
                        res.resume_offset = pos
                        continue
                break
            if lsn != expect:
                res.bad_offset, res.bad_reason, res.bad_is_tail = pos, f"LSN {lsn} where {expect} was expected", False
                break
            if keep:
                kept.append(Record(lsn, ts, bytes(mv[pos + REC_SIZE : end]), pos))
            expect += 1
            res.last_ts_us = ts
            pos = end
    res.records = expect - header.first_lsn
    if res.records:
        res.first_lsn = header.first_lsn
        res.last_lsn = expect - 1
    res.end = pos
    if pos < n and res.bad_offset is None and not (n == header.prealloc and _all_zero(data, pos, n)):
        res.bad_offset, res.bad_reason, res.bad_is_tail = _bad_frame(data, pos, res.last_lsn)
    return res, kept


def corrupt_error(res: ScanResult) -> CorruptData:
    """The error for a bad frame that may not be cut off."""
    return CorruptData(
        JET_ERR_LOG_FILE_CORRUPT, res.path.name, f"corrupt record at offset {res.bad_offset}: {res.bad_reason}"
    )


def create_generation(log_dir: Path, header: LogHeader) -> tuple[Path, LogHeader]:
    """Create a new generation file durably (temp name, fsync, rename, fsync dir).

    :param header: its header; when ``header.prealloc`` is set the file is preallocated to that size
        (where the filesystem cannot, it is not, and the header returned says 0).
    :returns: the file and the header written.
    """
    import dataclasses

    from ..fsutil import PRIVATE_FILE, fsync_dir

    final = log_dir / log_name(header.generation)
    if final.exists():
        raise CorruptData(JET_ERR_LOG_FILE_CORRUPT, final.name, "generation already exists")
    tmp = log_dir / (final.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # umask-independent (issue 9: the home is private)
        if header.prealloc > HEADER_SIZE:
            try:
                os.posix_fallocate(fd, 0, header.prealloc)
            except OSError:
                header = dataclasses.replace(header, prealloc=0)
        else:
            header = dataclasses.replace(header, prealloc=0)
        os.pwrite(fd, header.encode(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(log_dir)
    return final, header


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
