"""The checkpoint file ``system/edb.chk``: JSON with a CRC32 over its body, written atomically."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from ...errors import JET_ERR_CHECKPOINT_CORRUPT, CorruptData
from ...fsutil import atomic_write

CHECKPOINT_FILE = "edb.chk"


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint: every LSN up to ``lsn`` is durable in SQLite; ``generation`` holds ``lsn+1``."""

    lsn: int
    generation: int
    time_us: int


def read_checkpoint(path: Path) -> Checkpoint | None:
    """Read ``edb.chk``; None when absent, CorruptData when unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        body = json.dumps(doc["body"], sort_keys=True).encode()
        if zlib.crc32(body) != doc["crc32"]:
            raise ValueError("checksum mismatch")
        b = doc["body"]
        return Checkpoint(int(b["lsn"]), int(b["generation"]), int(b["time_us"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptData(JET_ERR_CHECKPOINT_CORRUPT, path.name, f"checkpoint file is corrupt: {e}") from None


def write_checkpoint(path: Path, cp: Checkpoint, identity: str) -> None:
    """Write ``edb.chk`` atomically with a CRC32 over its body."""
    body = {"lsn": cp.lsn, "generation": cp.generation, "time_us": cp.time_us, "identity": identity}
    raw = json.dumps(body, sort_keys=True).encode()
    atomic_write(path, json.dumps({"body": body, "crc32": zlib.crc32(raw)}, sort_keys=True).encode())


