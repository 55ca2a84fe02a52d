"""The catalog's edge cases on sets built the way the writer builds them (restore_setlib): sets the
catalog cannot place, moments outside the window, bad options — each one line with its HRESULT."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from catalog_sets import certsrv
from restore_setlib import add_requests, full_set, incremental_set, make_source, tick

from pycertsrv.backup.catalog import build_catalog, iso
from pycertsrv.backup.retention import plan_prune


def _sets(tmp_path: Path) -> Path:
    """f1 (+ i1), then an incremental of another database with no full set, then a damaged full set."""
    root = tmp_path / "sets"
    src = make_source(tmp_path / "src")
    add_requests(src, 3)
    high, _ = full_set(src, root / "f1")
    tick()
    add_requests(src, 2)
    incremental_set(src, root / "i1", high)
    src.close()
    other = make_source(tmp_path / "other", "Other CA")
    add_requests(other, 2)
    h2, _ = full_set(other, tmp_path / "other" / "sets" / "full")
    add_requests(other, 1)
    incremental_set(other, tmp_path / "other" / "sets" / "orphan", h2)  # written beside its full set ...
    other.close()
    shutil.move(tmp_path / "other" / "sets" / "orphan", root / "orphan")  # ... and moved away from it
    src2 = make_source(tmp_path / "src2", "Damaged CA")
    add_requests(src2, 2)
    full_set(src2, root / "damaged")
    src2.close()
    db = next((root / "damaged" / "DataBase").glob("*.db"))
    with db.open("r+b") as f:  # one byte changed: its SHA-256 no longer matches the manifest
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    return root


def test_sets_it_cannot_place(tmp_path: Path) -> None:
    root = _sets(tmp_path)
    cat = build_catalog(root, now=datetime.now(UTC) + timedelta(days=30))
    assert [(c.full.name, [s.name for s in c.incrementals]) for c in cat.chains] == [("f1", ["i1"])]
    assert [s.name for s in cat.orphans] == ["orphan"]
    bad = [s for s in cat.sets if not s.ok]
    assert [s.name for s in bad] == ["damaged"] and "SHA-256" in bad[0].problems[0]
    ws = "\n".join(cat.warnings)
    assert "orphan is not restorable" in ws and "damaged is unusable" in ws
    # 30 days on, both ages are over their limits.
    assert "the newest full set f1" in ws and "the newest incremental set" in ws
    # Prune keeps the only chain and leaves the sets it cannot place alone.
    plan = plan_prune(root, 1, cat)
    assert plan.delete == [] and sorted(s.name for s in plan.untouched) == ["damaged", "orphan"]


def test_moments_and_options_refused_in_one_line(tmp_path: Path) -> None:
    root = _sets(tmp_path)
    cat = build_catalog(root)
    (a, b), = cat.window
    for at in (a - 1_000_000, b + 1_000_000, "yesterday"):
        moment = iso(at) if isinstance(at, int) else at
        out = certsrv("catalog", str(root), "--at", str(moment), check=False)
        line = out.stderr.strip()
        assert out.returncode == 1 and "\n" not in line and "0x80070057 E_INVALIDARG" in line, line
    assert "f1" in certsrv("catalog", str(root), "--at", iso(a) or "").stdout  # the window's own edges are in
    assert json.loads(certsrv("catalog", str(root), "--json", "--at", iso(b) or "").stdout)["at"]["argv"][2:4] == [
        str(root / "f1"), str(root / "i1")]
    for args in (["--max-full-age", "8x"], ["--max-incremental-age", "0h"], ["--json", "--html", "x.html"]):
        out = certsrv("catalog", str(root), *args, check=False)
        assert out.returncode == 1 and "0x80070057 E_INVALIDARG" in out.stderr and "Traceback" not in out.stderr
    out = certsrv("catalog", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 1 and "0x80070002 ERROR_FILE_NOT_FOUND" in out.stderr
    out = certsrv("prune", str(tmp_path / "nowhere"), "--keep-full", "1", check=False)
    assert out.returncode == 1 and "0x80070002 ERROR_FILE_NOT_FOUND" in out.stderr
