"""Issue 14: every set records the writer lease epoch of its generations (lineage), an incremental the epoch its
base ended in; ``certsrv verify-backup`` refuses a forked or forged lineage in one line with the HRESULT, and a
set written before lineages is still read and verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from setlib import full_and_incremental

from pycertsrv.backupset.manifest import manifest_path, read_manifest
from pycertsrv.backupset.setauth import seal
from pycertsrv.backupset.verify import verify_backup
from pycertsrv.errors import JET_ERR_BAD_LOG_SIGNATURE, NTE_BAD_SIGNATURE
from support import ca_fixture, certsrv

ca = ca_fixture("Lineage Test CA")
PASSWORD = b"lineage set password"


def _doc(set_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(manifest_path(set_dir).read_text())
    return doc


def _write(set_dir: Path, doc: dict[str, Any], *, reseal: bool) -> None:
    """Write a changed manifest: resealed with the password (an authentic set of a forked chain), or not (forged)."""
    if reseal:
        doc = seal({k: v for k, v in doc.items() if k != "auth"}, PASSWORD, n=1 << 14)
    manifest_path(set_dir).write_text(json.dumps(doc, indent=2))


def _verify_cli(set_dir: Path, pw: Path, *extra: str) -> tuple[int, str]:
    r = certsrv("verify-backup", str(set_dir), *extra, "--password-file", str(pw)) if not extra else \
        certsrv("verify-backup", str(set_dir), *extra)
    return r.returncode, r.stdout + r.stderr


def _forked_chain(ca: Any, tmp_path: Path, fulls: int, incs: int) -> tuple[Path, Path]:
    """A full set and incrementals; the first incremental resealed (authentic) claiming that its base ended in epoch 7
    and that it starts in epoch 7: the base beside it ended in epoch 0, so its generations are not that base's
    continuation. Returns (the password file, that incremental)."""
    full_and_incremental(ca, tmp_path, PASSWORD, fulls, incs)
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD + b"\n")
    inc = tmp_path / "i1"
    doc = _doc(inc)
    doc["base"]["epoch"] = 7
    doc["lineage"][0]["epoch"] = 7
    _write(inc, doc, reseal=True)
    return pw, inc


def test_sets_record_the_lineage_and_it_verifies(ca: Any, tmp_path: Path) -> None:
    full_and_incremental(ca, tmp_path, PASSWORD, 3, 2)
    full, inc = read_manifest(tmp_path / "full"), read_manifest(tmp_path / "i1")
    # SQLite: one writer, epoch 0, every generation of each set in one run
    assert [r.to_json() for r in full.lineage or []] == [{"epoch": 0, "gen_low": full.gen_low,
                                                           "gen_high": full.gen_high}]
    assert [r.to_json() for r in inc.lineage or []] == [{"epoch": 0, "gen_low": inc.gen_low,
                                                          "gen_high": inc.gen_high}]
    assert inc.base is not None and inc.base["epoch"] == 0 and inc.gen_low == full.gen_high + 1
    for d in ("full", "i1"):
        rep = verify_backup(tmp_path / d, PASSWORD)
        assert rep.ok and rep.authenticated, [str(p) for p in rep.problems]
        assert rep.to_json()["lineage"] == [r.to_json() for r in read_manifest(tmp_path / d).lineage or []]


def test_a_forked_lineage_is_refused_in_one_line(ca: Any, tmp_path: Path) -> None:
    pw, inc = _forked_chain(ca, tmp_path, 2, 2)
    rep = verify_backup(inc, PASSWORD)
    assert rep.authenticated and not rep.ok
    assert {p.hresult for p in rep.problems} == {JET_ERR_BAD_LOG_SIGNATURE}
    assert "does not continue its base's" in str(rep.problems[0])
    rc, out = _verify_cli(inc, pw)
    assert rc != 0 and "Traceback" not in out
    line = next(x for x in out.splitlines() if "0xC8000212" in x)
    assert "JET_errBadLogSignature" in line and "take a full backup" in line

    # An incremental that goes back to an older epoch than its base ended in (base beside it not consulted).
    doc = _doc(inc)
    doc["base"]["epoch"] = 9
    doc["lineage"][0]["epoch"] = 4
    _write(inc, doc, reseal=True)
    assert any("forked" in p.message for p in verify_backup(inc, PASSWORD).problems)

    # Epochs going back inside one set.
    doc = _doc(inc)
    low, high = doc["gen_low"], doc["gen_high"]
    if high > low:
        doc["base"]["epoch"] = 0
        doc["lineage"] = [{"epoch": 5, "gen_low": low, "gen_high": low},
                          {"epoch": 2, "gen_low": low + 1, "gen_high": high}]
        _write(inc, doc, reseal=True)
        assert any("never goes back" in p.message for p in verify_backup(inc, PASSWORD).problems)


def test_a_forged_lineage_fails_the_authenticator_and_the_structure_check(ca: Any, tmp_path: Path) -> None:
    full_and_incremental(ca, tmp_path, PASSWORD, 2, 1)
    inc = tmp_path / "i1"
    doc = _doc(inc)
    doc["lineage"] = [{"epoch": 3, "gen_low": doc["gen_low"] + 1, "gen_high": doc["gen_high"]}]
    _write(inc, doc, reseal=False)  # edited without the password
    rep = verify_backup(inc, PASSWORD)
    assert not rep.ok and rep.problems[0].hresult == NTE_BAD_SIGNATURE  # the forgery is named as such first
    rep = verify_backup(inc, None)  # structure only: the lineage itself does not hold together
    assert not rep.ok and JET_ERR_BAD_LOG_SIGNATURE in {p.hresult for p in rep.problems}
    rc, out = _verify_cli(inc, tmp_path, "--structure-only")
    assert rc != 0 and "0xC8000212 JET_errBadLogSignature" in out and "Traceback" not in out


def test_a_set_from_before_lineages_is_still_read_and_verified(ca: Any, tmp_path: Path) -> None:
    full_and_incremental(ca, tmp_path, PASSWORD, 2, 1)
    for d in ("full", "i1"):
        doc = _doc(tmp_path / d)
        doc.pop("lineage")
        if doc.get("base"):
            doc["base"].pop("epoch")
        _write(tmp_path / d, doc, reseal=True)
    inc = tmp_path / "i1"
    doc = _doc(inc)  # the base's MAC changed with its reseal: link the incremental to it again
    doc["base"]["mac"] = _doc(tmp_path / "full")["auth"]["mac"]
    _write(inc, doc, reseal=True)
    for d in ("full", "i1"):
        m = read_manifest(tmp_path / d)
        assert m.lineage is None
        rep = verify_backup(tmp_path / d, PASSWORD)
        assert rep.ok and rep.authenticated, [str(p) for p in rep.problems]


def test_restore_refuses_a_forked_lineage_before_writing_anything(ca: Any, tmp_path: Path) -> None:
    """Restore verifies each set as verify-backup does (lineage included): a chain whose incremental does not continue
    its base's lineage is refused in one line, and the target home is never made."""
    pw, inc = _forked_chain(ca, tmp_path, 2, 1)  # authentic, but generations of another writer's chain
    target = tmp_path / "restored"
    r = certsrv("restore", str(tmp_path / "full"), str(inc), "--home", str(target), "--password-file", str(pw))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out
    line = next(x for x in out.splitlines() if "0xC8000212" in x)
    assert "JET_errBadLogSignature" in line and "take a full backup" in line
    assert not target.exists() or not any(target.iterdir())
    # the unforked full set alone still restores, and the restored CA opens
    ok = certsrv("restore", str(tmp_path / "full"), "--home", str(target), "--password-file", str(pw), "--force")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (target / "certsrv.toml").exists()
