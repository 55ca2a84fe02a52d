"""The catalog's edge cases on sets built the way the writer builds them (tests/support.py): sets the
catalog cannot place, moments outside the window, bad options — each one line with its HRESULT."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from catalog_sets import certsrv

from pycertsrv.backupset.catalog import build_catalog, iso
from pycertsrv.backupset.retention import plan_prune
from support import add_requests, full_set, incremental_set, make_source, tick


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
    h2, _ = full_set(other, tmp_path / "other-sets" / "full")
    add_requests(other, 1)
    incremental_set(other, tmp_path / "other-sets" / "orphan", h2)  # beside its full set, outside the home ...
    other.close()
    shutil.move(tmp_path / "other-sets" / "orphan", root / "orphan")  # ... and moved away from it
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


def test_with_the_password_a_forged_set_is_unusable(tmp_path: Path) -> None:
    """With --password-file every authenticator is checked: a set changed on the backup storage (its manifest's
    hashes recomputed) is named unusable and leaves the window; the others are authenticated."""
    from pycertsrv.fsutil import sha256_file
    from support import SET_PASSWORD

    root = tmp_path / "sets"
    src = make_source(tmp_path / "src")
    add_requests(src, 3)
    high, _ = full_set(src, root / "f1")
    add_requests(src, 2)
    incremental_set(src, root / "i1", high)
    src.close()
    pw = tmp_path / "pw"
    pw.write_bytes(SET_PASSWORD + b"\n")
    good = json.loads(certsrv("catalog", str(root), "--json", "--password-file", str(pw)).stdout)
    assert good["authenticity_checked"] and all(s["authenticated"] for s in good["sets"])
    assert [c["incrementals"] for c in good["chains"]] == [["i1"]]
    # The forger appends to i1's log and recomputes its size and SHA-256 in the manifest.
    mpath = root / "i1" / "DataBase" / "certbkxp.dat"
    doc = json.loads(mpath.read_text())
    entry = next(f for f in doc["files"] if f["role"] == "log")
    log = root / "i1" / entry["path"]
    with log.open("ab") as f:
        f.write(b"\0" * 16)
    entry["size"], entry["sha256"] = log.stat().st_size, sha256_file(log)
    mpath.write_text(json.dumps(doc))
    bad = json.loads(certsrv("catalog", str(root), "--json", "--password-file", str(pw)).stdout)
    i1 = next(s for s in bad["sets"] if s["name"] == "i1")
    assert not i1["ok"] and not i1["authenticated"]
    assert [c["incrementals"] for c in bad["chains"]] == [[]]
    assert any("i1 is unusable" in w for w in bad["warnings"])


def test_an_incremental_naming_another_base_is_cut_off() -> None:
    """Contiguous generations are not enough: an incremental that names (under its authenticator) another set as
    the one it continues is cut off, as restore refuses it (setcheck.check_chain)."""
    from pycertsrv.backupset.catalog import CatalogSet, _chain
    from pycertsrv.backupset.manifest import Manifest

    def mk(name: str, kind: str, gen: int, set_id: str, base: str | None, last: int) -> CatalogSet:
        m = Manifest(kind=kind, ca_name="CA", identity="00" * 16, created="2026-11-29T06:00:00+00:00",
                     gen_low=gen, gen_high=gen, set_id=set_id,
                     base=None if base is None else {"set_id": base, "mac": f"mac-{base}"},
                     auth={"mac": f"mac-{set_id}"})
        return CatalogSet(Path(name), m, start_us=last if kind == "full" else None, first_record_us=last,
                          last_record_us=last)

    full = mk("f", "full", 1, "F", None, 10)
    i1 = mk("i1", "incremental", 2, "I1", "F", 20)
    other = mk("x", "incremental", 3, "X", "SOMEONE-ELSE", 30)
    c = _chain(full, [other, i1])
    assert [s.name for s in c.incrementals] == ["i1"] and [s.name for s in c.cut_off] == ["x"]
    assert c.gap is not None and c.gap.spliced and "does not continue i1" in c.gap.text
    assert c.end_us == 20
    good = mk("i2", "incremental", 3, "I2", "I1", 30)
    c = _chain(full, [good, i1])
    assert [s.name for s in c.incrementals] == ["i1", "i2"] and c.gap is None and c.end_us == 30
