"""The archive's state read from a stopped home (``certsrv archive status`` when no service answers)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import ERROR_FILE_NOT_FOUND, NotFound
from ..store import archivemark, logfile


class _Settings:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM setting WHERE name = ?", (key,)).fetchone()
        return None if row is None else {"name": key, "value": row[0]}


def offline_status(home: Path) -> dict[str, Any]:
    """Watermark and lag from the home's files (the database read-only; the CA may be stopped)."""
    home = Path(home)
    cfg = config_mod.load(home)
    dbs = sorted((home / "db").glob("*.db"))
    if not dbs:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(home / "db"), "no CA database in this home")
    conn = sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True)
    try:
        marks = archivemark.read_marks(_Settings(conn))
    finally:
        conn.close()
    gens = logfile.list_generations(home / "logs")
    current = max(gens) if gens else 0
    pending = [g for g in gens if marks.watermark < g < current]
    sec = cfg.archive
    return {
        "enabled": sec is not None, "state": "service not running", "service": False,
        "destination": (sec.dest or f"command: {sec.command}") if sec is not None else None,
        "lineage": marks.lineage, "lineage_start": marks.start, "watermark": marks.watermark,
        "watermark_name": logfile.log_name(marks.watermark) if marks.watermark >= marks.start else None,
        "current_generation": current, "lag_generations": len(pending),
        "lag_bytes": sum(gens[g].stat().st_size for g in pending), "lag_seconds": None, "last_error": None,
    }
