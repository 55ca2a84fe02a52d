"""Helpers for the archive tests (issue 13): archived CA homes, the certsrv command, archive files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pycertsrv import config as config_mod
from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.verify import verify_archive
from pycertsrv.home import Home
from pycertsrv.store import logfile
from service.helpers import Service, make_home

PW = "archive test pw"


def short_dir(prefix: str = "arc") -> Path:
    """A work directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def archived_home(root: Path, **archive: Any) -> Home:
    """A fresh CA home with an ``[archive]`` section (and small log generations)."""
    home = make_home(root, "Archive Test CA")
    cfg = config_mod.load(home.root)
    cfg = cfg.model_copy(update={"archive": ArchiveSection(**archive)})
    config_mod.save(home.root, cfg)
    return home


def certsrv(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``certsrv`` command."""
    env = dict(os.environ)
    env.pop("CERTSRV_SERVER", None)
    env.pop("CERTSRV_HOME", None)
    out = subprocess.run([sys.executable, "-m", "pycertsrv.cli", *args], capture_output=True, text=True,
                         timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


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
    db = next((home / "db").glob("*.db"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()


def setting(home: Path, name: str) -> str | None:
    """One setting from the home's database."""
    for r in db_rows(home, "setting"):
        if r["name"] == name:
            return str(r["value"])
    return None


def openssl_verify(ca_cert: Path, cert_der: bytes, work: Path) -> None:
    """``openssl verify`` a DER certificate against the CA certificate (an independent check)."""
    leaf, pem = work / "leaf.der", work / "leaf.pem"
    leaf.write_bytes(cert_der)
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(leaf), "-out", str(pem)], check=True,
                   capture_output=True)
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca_cert), str(pem)], capture_output=True, text=True)
    assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr


def norm_serial(s: str) -> str:
    """A serial as the database keeps it (upper-case hex, no colons)."""
    return s.replace(":", "").upper()
