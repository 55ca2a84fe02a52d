"""Backup sets for the catalog tests, made by the real ``certsrv backup --into`` against a live service.

Two chains under one directory:
- chain A: full, i1, i2, i3; i2 is then deleted, so i3 is cut off by a gap;
- chain B: full, iB1, iB2.
Between the batches of issuance the test notes the CA's rows and a moment with no write around it
(``cut_a`` inside i1, ``cut_b`` inside iB2), and the wall-clock bounds of each step.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from setlib import db_rows_readonly

import support
from pycertsrv import config as config_mod
from pycertsrv.ca import Authority
from support import Service, make_csr

PW = "catalog password"


def certsrv(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (exit 0 asserted unless ``check=False``)."""
    return support.certsrv(*args, check=check, timeout=timeout)


def us_now() -> int:
    """Now, µs since the epoch (the unit of log record times)."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)


@dataclass
class Built:
    """What the fixture made."""

    work: Path
    home: Path
    sets_dir: Path
    pwfile: Path
    names: dict[str, str] = field(default_factory=dict)  # label -> set directory name
    marks: dict[str, int] = field(default_factory=dict)  # label -> µs
    rows: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    removed_gens: tuple[int, int] = (0, 0)


def _backup(b: Built, label: str, incremental: bool) -> None:
    before = set(p.name for p in b.sets_dir.iterdir()) if b.sets_dir.exists() else set()
    # Every set gets the password (authenticated sets: the incrementals are keyed by it too).
    args = ["backup", "--into", str(b.sets_dir), "--home", str(b.home), "--quiet", "--password-file", str(b.pwfile)]
    args += ["--incremental", "--database-only"] if incremental else []
    b.marks[f"{label}_begin"] = us_now()
    certsrv(*args)
    b.marks[f"{label}_done"] = us_now()
    new = set(p.name for p in b.sets_dir.iterdir()) - before
    assert len(new) == 1, new
    b.names[label] = new.pop()
    assert b.names[label].endswith("-incr" if incremental else "-full"), b.names[label]


def _issue(b: Built, c: Any, label: str, n: int) -> None:
    b.marks[f"{label}_begin"] = us_now()
    for i in range(n):
        c.submit(make_csr(f"{label}{i}"))
    b.marks[f"{label}_end"] = us_now()


def _cut(b: Built, label: str) -> None:
    """A moment with no write near it: rows now are the CA's rows at that moment."""
    b.rows[label] = db_rows_readonly(b.home)
    time.sleep(0.02)
    b.marks[label] = us_now()
    time.sleep(0.02)


# (step, label, argument): issue N requests, back up (incremental?), or note a cut; in this order.
STEPS: list[tuple[str, str, int | bool | None]] = [
    ("issue", "a0", 2), ("backup", "fullA", False), ("issue", "a1", 2), ("cut", "cut_a", None),
    ("issue", "a2", 2), ("backup", "i1", True), ("issue", "a3", 2), ("backup", "i2", True),
    ("issue", "a4", 2), ("backup", "i3", True),
    ("issue", "b0", 1), ("backup", "fullB", False), ("issue", "b1", 2), ("backup", "iB1", True),
    ("issue", "b2", 2), ("cut", "cut_b", None), ("issue", "b3", 2), ("backup", "iB2", True),
]


def build(work: Path) -> Built:
    """Make the two chains (see the module docstring)."""
    home = work / "ca"
    Authority.init(home, "Catalog CA").close()
    cfg = config_mod.load(home)
    cfg.backup.dir = str(work / "sets")  # the service's /ui/backups catalogues this directory
    config_mod.save(home, cfg)
    b = Built(work, home, work / "sets", work / "pw")
    b.pwfile.write_text(PW + "\n")
    svc = Service(home).start()
    try:
        with svc.client() as c:
            for step, label, arg in STEPS:
                if step == "issue":
                    _issue(b, c, label, int(arg))
                elif step == "backup":
                    _backup(b, label, bool(arg))
                else:
                    _cut(b, label)
    finally:
        svc.stop()
    m = json.loads((b.sets_dir / b.names["i2"] / "DataBase" / "certbkxp.dat").read_text())
    b.removed_gens = (m["gen_low"], m["gen_high"])
    import shutil

    shutil.rmtree(b.sets_dir / b.names["i2"])  # the missing middle incremental
    return b
