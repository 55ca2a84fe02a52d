"""Helpers for the archive tests (issue 13): archived CA homes, the certsrv command, archive files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import support
from pycertsrv import config as config_mod
from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.verify import verify_archive
from pycertsrv.home import Home
from pycertsrv.store import logfile
from support import Service, db_rows_readonly, make_home, short_home

PW = "archive test pw"


def short_dir(prefix: str = "arc") -> Path:
    """A work directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return short_home(prefix).parent


def archived_home(root: Path, **archive: Any) -> Home:
    """A fresh CA home with an ``[archive]`` section (and small log generations)."""
    home = make_home(root, "Archive Test CA")
    cfg = config_mod.load(home.root)
    cfg = cfg.model_copy(update={"archive": ArchiveSection(**archive)})
    config_mod.save(home.root, cfg)
    return home


def certsrv(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``certsrv`` command (exit 0 asserted unless ``check=False``)."""
    return support.certsrv(*args, check=check, timeout=timeout)


def wait_for(pred: Any, what: str, timeout: float = 60.0, svc: Service | None = None) -> Any:
    """Poll ``pred()`` until truthy (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{svc.log()[-3000:]}" if svc else ""))
        time.sleep(0.05)


def archive_status(svc: Service) -> dict[str, Any]:
    """The service's archive status (GET /status)."""
    with svc.client() as c:
        st: dict[str, Any] = c.status()["archive"]
        return st


def archived_files(dest: Path) -> dict[int, Path]:
    """Generation -> file of the (single) lineage of the (single) CA in an archive."""
    chains = verify_archive(dest).chains
    assert len(chains) == 1, [c.directory for c in chains]
    return logfile.list_generations(chains[0].directory)


def last_archived_record(dest: Path) -> logfile.Record:
    """The newest record in the archive (the last shipped LSN)."""
    files = archived_files(dest)
    for g in sorted(files, reverse=True):
        _, recs = logfile.scan(files[g], None, keep=True)
        if recs:
            return recs[-1]
    raise AssertionError("the archive holds no record")


def db_rows(home: Path, table: str) -> list[dict[str, Any]]:
    """A table's rows read from the home's database file (read-only)."""
    return db_rows_readonly(home, [table])[table]


def setting(home: Path, name: str) -> str | None:
    """One setting from the home's database."""
    for r in db_rows(home, "setting"):
        if r["name"] == name:
            return str(r["value"])
    return None


def norm_serial(s: str) -> str:
    """A serial as the database keeps it (upper-case hex, no colons)."""
    return s.replace(":", "").upper()
