"""Issue 9 finding 4: backup sets are authenticated. A forger who can write the backup storage (but does not
know the set's password) cannot make ``certsrv verify-backup`` or ``certsrv restore`` accept a changed set.

The sets are made by the real writer (``certsrv backup``) against a real service; every check runs the CLI as a
subprocess, as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycertsrv.ca import Authority
from pycertsrv.store import Store
from support import (
    SET_PASSWORD,
    Service,
    add_requests,
    certsrv,
    full_set,
    incremental_set,
    issue,
    make_csr,
    make_source,
    short_home,
)

PW = "forge-proof password"
DISP_ISSUED, DISP_REVOKED, KEY_COMPROMISE = 20, 21, 1


def one_line_refusal(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, exactly one line on stderr (no traceback), holding every needle."""
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("certsrv: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def revoked_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute("SELECT serial, disposition, revocation_reason FROM request WHERE disposition = ?",
                                 (DISP_REVOKED,)))
    finally:
        conn.close()


def rehash_manifest(set_dir: Path, edit: Any = None) -> None:
    """What a forger does after changing files: recompute every size and SHA-256 in certbkxp.dat (the
    authenticator is left as it was: without the password it cannot be recomputed)."""
    mpath = set_dir / "DataBase" / "certbkxp.dat"
    doc = json.loads(mpath.read_text())
    for f in doc["files"]:
        p = set_dir / f["path"]
        f["size"] = p.stat().st_size
        f["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    if edit is not None:
        edit(doc)
    mpath.chmod(0o600)
    mpath.write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def sets() -> Iterator[dict[str, Any]]:
    """A CA with one certificate revoked for keyCompromise; a full set and an incremental of it (real service)."""
    home = short_home("auth")
    work = home.parent
    with Authority.init(home, "Auth Test CA") as a:
        serials = issue(a, 4)
        a.revoke(serials[1], "keyCompromise")
    pw = work / "pw"
    pw.write_text(PW + "\n")
    svc = Service(home).start()
    try:
        r = certsrv("backup", str(work / "full"), "--home", str(home), "--password-file", str(pw), "--keep-log",
                    "--quiet")
        assert r.returncode == 0, r.stderr
        with svc.client() as c:
            c.submit(make_csr("after-full"))
        r = certsrv("backup", str(work / "i1"), "--home", str(home), "--incremental", "--database-only",
                    "--password-file", str(pw), "--quiet")
        assert r.returncode == 0, r.stderr
    finally:
        svc.stop()
    yield {"home": home, "work": work, "pw": pw, "revoked": serials[1]}
    shutil.rmtree(work, ignore_errors=True)


def forge_unrevoke(src: Path, dest: Path) -> None:
    """The attack of finding 4: in a copy of the set, put the keyCompromise-revoked certificate back to issued."""
    shutil.copytree(src, dest)
    db = next((dest / "DataBase").glob("*.db"))
    db.chmod(0o600)
    conn = sqlite3.connect(db)
    try:
        n = conn.execute("UPDATE request SET disposition = ?, revoked_at = NULL, revocation_reason = NULL "
                         "WHERE disposition = ? AND revocation_reason = ?",
                         (DISP_ISSUED, DISP_REVOKED, KEY_COMPROMISE)).rowcount
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert n == 1
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        extra.unlink(missing_ok=True)
    assert revoked_rows(db) == []
    rehash_manifest(dest)


def test_unrevoked_row_with_recomputed_hashes_is_refused(sets: dict[str, Any]) -> None:
    work, pw = sets["work"], str(sets["pw"])
    forged = work / "forged-unrevoke"
    forge_unrevoke(work / "full", forged)
    # The forgery is perfect as far as sizes, hashes, logs and identity go: only the authenticator tells.
    s = certsrv("verify-backup", str(forged), "--structure-only")
    assert s.returncode == 0 and s.stdout.startswith("STRUCTURE OK, AUTHENTICITY NOT CHECKED"), s.stdout + s.stderr
    one_line_refusal(certsrv("verify-backup", str(forged), "--password-file", pw),
                     str(forged), "0x80090006 NTE_BAD_SIGNATURE", "altered")
    # Without the password verify-backup never says OK.
    nopw = certsrv("verify-backup", str(forged))
    one_line_refusal(nopw, "--password-file")
    assert "OK" not in nopw.stdout
    target = work / "r-forged"
    one_line_refusal(certsrv("restore", str(forged), "--home", str(target), "--password-file", pw),
                     str(forged), "0x80090006 NTE_BAD_SIGNATURE")
    assert not target.exists()  # refused before the home was created
    # The same restore with the incremental as well: refused just the same.
    one_line_refusal(certsrv("restore", str(forged), str(work / "i1"), "--home", str(target), "--password-file", pw),
                     str(forged), "0x80090006 NTE_BAD_SIGNATURE")
    assert not target.exists()
    # Control: the genuine set verifies, restores, and the certificate stays revoked for keyCompromise.
    ok = certsrv("verify-backup", str(work / "full"), "--password-file", pw)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: full backup") and "authenticator verified" in ok.stdout
    good = work / "r-good"
    r = certsrv("restore", str(work / "full"), str(work / "i1"), "--home", str(good), "--password-file", pw)
    assert r.returncode == 0, r.stderr
    with Authority.open(good) as ca:
        rows = ca.store.select("request", order_by=["request_id"])
        assert [(x["disposition"], x["revocation_reason"]) for x in rows if x["disposition"] == DISP_REVOKED] \
            == [(DISP_REVOKED, KEY_COMPROMISE)]
        crl = ca.publish_crl()
    # An independent tool: the restored CA's next CRL lists the compromised serial.
    text = subprocess.run(["openssl", "crl", "-in", str(crl.pem_path), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert sets["revoked"].upper().lstrip("0") in text.replace(":", "").upper()


def _relabel_generations(d: Path, doc: dict[str, Any]) -> None:
    """Claim the set's logs are one generation later than they are (files renamed to match)."""
    for f in sorted((f for f in doc["files"] if f["role"] == "log"), key=lambda f: f["path"], reverse=True):
        g = int(Path(f["path"]).stem[3:], 16)
        new = f"DataBase/edb{g + 1:08X}.log"
        (d / f["path"]).rename(d / new)
        f["path"] = new
    doc["gen_low"] += 1
    doc["gen_high"] += 1


@pytest.mark.parametrize("case", ["kind", "generations", "snapshot_lsn", "swap_file"])
def test_manifest_only_tampering_is_refused(sets: dict[str, Any], case: str) -> None:
    work, pw = sets["work"], str(sets["pw"])
    src = work / ("i1" if case == "kind" else "full")
    d = work / f"tamper-{case}"
    shutil.copytree(src, d)
    if case == "kind":
        rehash_manifest(d, lambda doc: doc.update(kind="full"))
    elif case == "generations":
        rehash_manifest(d, lambda doc: _relabel_generations(d, doc))
    elif case == "snapshot_lsn":
        rehash_manifest(d, lambda doc: doc.update(snapshot_lsn=doc["snapshot_lsn"] - 1))
    else:  # another CA configuration in place of the set's (sizes and hashes recomputed)
        cfg = d / "Config" / "certsrv.toml"
        cfg.chmod(0o600)
        cfg.write_text(cfg.read_text() + "\n# forged\n")
        rehash_manifest(d)
    one_line_refusal(certsrv("verify-backup", str(d), "--password-file", pw), str(d), "NTE_BAD_SIGNATURE")
    target = work / f"r-tamper-{case}"
    one_line_refusal(certsrv("restore", str(d), "--home", str(target), "--password-file", pw),
                     str(d), "NTE_BAD_SIGNATURE")
    assert not target.exists()


def _fork(tmp_path: Path) -> tuple[Path, Path]:
    """One database, two timelines after the same full set: returns (dir of timeline A, dir of timeline B).
    A: full, a1, a2 (each incremental chained to the set before it). B: the same full, b1 (same generation as
    a1, other rows)."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    src_home = tmp_path / "src"
    s = make_source(src_home)
    add_requests(s, 5)
    h0, _ = full_set(s, a_dir / "full")
    s.close()
    shutil.copytree(src_home, tmp_path / "src-b")
    shutil.copytree(a_dir / "full", b_dir / "full")
    sa = Store.open(src_home)
    sb = Store.open(tmp_path / "src-b")
    try:
        add_requests(sa, 3, tag="a")
        h1, _ = incremental_set(sa, a_dir / "a1", h0)
        add_requests(sa, 3, tag="a")
        incremental_set(sa, a_dir / "a2", h1)
        add_requests(sb, 7, tag="b")  # other rows, same generation numbers
        hb, _ = incremental_set(sb, b_dir / "b1", h0)
        assert hb == h1
    finally:
        sa.close()
        sb.close()
    return a_dir, b_dir


def test_incremental_from_another_chain_is_refused(tmp_path: Path) -> None:
    a_dir, b_dir = _fork(tmp_path)
    pw = tmp_path / "pw"
    pw.write_bytes(SET_PASSWORD + b"\n")
    # Generations line up (full ..h0, b1 = h0+1, a2 = h0+2): only the chain link tells that a2 does not continue b1.
    target = tmp_path / "r-splice"
    line = one_line_refusal(certsrv("restore", str(b_dir / "full"), str(b_dir / "b1"), str(a_dir / "a2"),
                                    "--database-only", "--home", str(target), "--password-file", str(pw)),
                            str(a_dir / "a2"), "NTE_BAD_SIGNATURE", "does not continue")
    assert str(b_dir / "b1") in line
    assert not target.exists()
    # Each timeline on its own restores (dry run: the sets are accepted).
    for chain in ([a_dir / "full", a_dir / "a1", a_dir / "a2"], [b_dir / "full", b_dir / "b1"]):
        r = certsrv("restore", *map(str, chain), "--database-only", "--home", str(tmp_path / "r-ok"),
                    "--password-file", str(pw), "--dry-run")
        assert r.returncode == 0, r.stderr
    # An incremental of another CA altogether.
    other = make_source(tmp_path / "other-src", "Other CA")
    try:
        oh, _ = full_set(other, tmp_path / "o" / "full")
        add_requests(other, 2)
        incremental_set(other, tmp_path / "o" / "i1", oh)
    finally:
        other.close()
    one_line_refusal(certsrv("restore", str(a_dir / "full"), str(tmp_path / "o" / "i1"), "--database-only",
                             "--home", str(target), "--password-file", str(pw)), str(tmp_path / "o" / "i1"))
    assert not target.exists()


def test_set_without_authenticator_needs_allow_unauthenticated(sets: dict[str, Any]) -> None:
    work, pw = sets["work"], str(sets["pw"])
    legacy = work / "legacy"
    shutil.copytree(work / "full", legacy)
    # A set as written before this change: no authenticator, no set id, no chain link.
    rehash_manifest(legacy, lambda doc: [doc.pop(k) for k in ("auth", "set_id", "base")])
    one_line_refusal(certsrv("verify-backup", str(legacy), "--password-file", pw),
                     str(legacy), "NTE_BAD_SIGNATURE", "no authenticator", "--allow-unauthenticated")
    target = work / "r-legacy"
    one_line_refusal(certsrv("restore", str(legacy), "--home", str(target), "--password-file", pw),
                     str(legacy), "NTE_BAD_SIGNATURE", "--allow-unauthenticated")
    assert not target.exists()
    v = certsrv("verify-backup", str(legacy), "--password-file", pw, "--allow-unauthenticated")
    assert v.returncode == 0 and v.stdout.startswith("UNAUTHENTICATED:") and "OK" not in v.stdout
    assert "WARNING" in v.stderr and "NO authenticator" in v.stderr
    r = certsrv("restore", str(legacy), "--home", str(target), "--password-file", pw, "--allow-unauthenticated")
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "NO authenticator" in r.stderr and str(legacy) in r.stderr
    with Authority.open(target) as ca:
        assert any(x["disposition"] == DISP_REVOKED for x in ca.store.select("request", order_by=["request_id"]))


def test_wrong_password_is_refused_clearly(sets: dict[str, Any]) -> None:
    work = sets["work"]
    bad = work / "badpw"
    bad.write_text("not the password\n")
    for set_dir in (work / "full", work / "i1"):  # with and without a PKCS#12
        one_line_refusal(certsrv("verify-backup", str(set_dir), "--password-file", str(bad)),
                         str(set_dir), "0x80070056 ERROR_INVALID_PASSWORD", "password does not open this set")
    target = work / "r-badpw"
    one_line_refusal(certsrv("restore", str(work / "full"), str(work / "i1"), "--home", str(target),
                             "--password-file", str(bad)),
                     str(work / "full"), "0x80070056 ERROR_INVALID_PASSWORD", "password")
    assert not target.exists()
    # No password at all (and no terminal to ask on): refused, naming what to give.
    one_line_refusal(certsrv("restore", str(work / "full"), "--home", str(target)),
                     "ERROR_INVALID_PASSWORD", "--password-file")
    assert not target.exists()
