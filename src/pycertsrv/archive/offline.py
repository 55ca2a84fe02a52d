"""The archive's state read from a stopped home (``certsrv archive status`` when no service answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import ERROR_FILE_NOT_FOUND, JET_ERR_DATABASE_CORRUPTED, CorruptData, NotFound
from ..home import Home
from ..store import archivemark, logfile, setdb


class _Settings:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        value = self.values.get(key)
        return None if value is None else {"name": key, "value": value}


def offline_status(home: Path) -> dict[str, Any]:
    """Watermark and lag from the home's files (the database read-only; the CA may be stopped)."""
    h = Home(Path(home))
    cfg = config_mod.load(h.root)
    dbs = sorted(h.db_dir.glob("*.db"))
    if not dbs:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(h.db_dir), "no CA database in this home")
    try:
        marks = archivemark.read_marks(_Settings(setdb.read_settings(dbs[0], immutable=False)))
    except setdb.UnreadableDatabase as e:
        raise CorruptData(JET_ERR_DATABASE_CORRUPTED, str(dbs[0]), f"the CA database is not readable: {e}") from None
    gens = logfile.list_generations(h.log_dir)
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
