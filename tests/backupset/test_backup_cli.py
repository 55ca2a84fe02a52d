"""`certsrv backup` / `certsrv verify-backup` as a user runs them (subprocess, live service)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Service, certsrv, live_service, short_home


@pytest.fixture(scope="module")
def live() -> Iterator[Service]:
    svc = live_service(short_home("cbcli"), name="CLI Test CA")
    yield svc
    svc.cleanup()


def pwfile(tmp_path: Path) -> str:
    """A password file (every set needs a password: it keys the set's authenticator)."""
    p = tmp_path / "pw"
    p.write_text("correct horse\n")
    return str(p)


def test_backup_verify_and_refusals(live: Service, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    out = tmp_path / "set"
    r = certsrv("backup", str(out), "--password-file", str(pw), home=live.home.root)
    assert r.returncode == 0, r.stderr
    assert "Backing up Database files" in r.stderr and "Backing up Log files" in r.stderr
    assert "Database logs successfully truncated" in r.stdout
    assert (out / "CLI Test CA.p12").is_file() and (out / "DataBase" / "certbkxp.dat").is_file()
    v = certsrv("verify-backup", str(out), "--password-file", str(pw))
    assert v.returncode == 0 and v.stdout.startswith("OK: full backup of 'CLI Test CA'"), v.stdout + v.stderr
    doc = json.loads(certsrv("verify-backup", str(out), "--json", "--password-file", str(pw)).stdout)
    assert doc["ok"] is True and doc["kind"] == "full" and doc["authenticated"] is True
    # the key file opens with the password (openssl, not our code)
    o = subprocess.run(["openssl", "pkcs12", "-in", str(out / "CLI Test CA.p12"), "-nokeys", "-passin",
                        "pass:correct horse"], capture_output=True, text=True)
    assert o.returncode == 0 and "CN=CLI Test CA" in o.stdout.replace(" = ", "=")
    # a non-empty directory is refused, and left as it was
    before = sorted(p.name for p in out.rglob("*"))
    r = certsrv("backup", str(out), "--password-file", str(pw), home=live.home.root)
    assert r.returncode == 1 and "0x80070091" in r.stderr and "ERROR_DIR_NOT_EMPTY" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    # no password and no terminal: refused before anything is written
    r = certsrv("backup", str(tmp_path / "nopw"), home=live.home.root)
    assert r.returncode == 1 and "--password-file" in r.stderr
    # an incremental into its own directory, JSON output
    r = certsrv("backup", str(tmp_path / "inc"), "--incremental", "--database-only", "--json", "--password-file",
                str(pw), home=live.home.root)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["manifest"]["kind"] == "incremental" and res["truncated"] is None
    assert res["manifest"]["gen_low"] == json.loads(
        certsrv("verify-backup", str(out), "--json", "--password-file", str(pw)).stdout)["gen_high"] + 1
    assert certsrv("verify-backup", str(tmp_path / "inc"), "--password-file", str(pw)).returncode == 0


def test_verify_backup_names_the_bad_file(live: Service, tmp_path: Path) -> None:
    out = tmp_path / "set"
    pw = pwfile(tmp_path)
    r = certsrv("backup", str(out), "--database-only", "--keep-log", "--quiet", "--password-file", pw,
                home=live.home.root)
    assert r.returncode == 0, r.stderr
    log = sorted((out / "DataBase").glob("edb*.log"))[-1]
    os.chmod(log, 0o644)
    with open(log, "r+b") as f:
        f.seek(70)
        b = f.read(1)
        f.seek(70)
        f.write(bytes([b[0] ^ 0x01]))
    v = certsrv("verify-backup", str(out), "--password-file", pw)
    assert v.returncode == 1
    assert f"DataBase/{log.name}" in v.stderr and "SHA-256" in v.stderr
    doc = json.loads(certsrv("verify-backup", str(out), "--json", "--password-file", pw).stdout)
    assert doc["ok"] is False and doc["problems"][0]["path"] == f"DataBase/{log.name}"


def test_nice_paced_backup_and_bad_values(live: Service, tmp_path: Path) -> None:
    out = tmp_path / "set"
    pw = pwfile(tmp_path)
    r = certsrv("backup", str(out), "--database-only", "--keep-log", "--quiet", "--nice", "20", "--password-file", pw,
                home=live.home.root)
    assert r.returncode == 1 and "0x80070057" in r.stderr and "--nice" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    for bad in ("fast", "0", "-5M"):
        r = certsrv("backup", str(out), "--database-only", "--quiet", "--max-rate", bad, "--password-file", pw,
                    home=live.home.root)
        assert r.returncode == 1 and "0x80070057" in r.stderr and "--max-rate" in r.stderr, r.stderr
        assert not out.exists() or not any(out.iterdir())
    r = certsrv("backup", str(out), "--database-only", "--keep-log", "--quiet", "--nice", "10", "--max-rate", "64M",
                "--password-file", pw, home=live.home.root)
    assert r.returncode == 0, r.stderr
    v = certsrv("verify-backup", str(out), "--password-file", pw)
    assert v.returncode == 0 and v.stdout.startswith("OK: full backup of 'CLI Test CA'"), v.stdout + v.stderr


def test_incremental_without_full_is_refused(tmp_path: Path) -> None:
    svc = live_service(short_home("cbinc"), name="Fresh CA")
    try:
        r = certsrv("backup", str(tmp_path / "inc"), "--incremental", "--database-only", "--password-file",
                    pwfile(tmp_path), home=svc.home.root)
        assert r.returncode == 1 and "0xC8000230" in r.stderr and "JET_errMissingFullBackup" in r.stderr
        assert not (tmp_path / "inc").exists() or not any((tmp_path / "inc").iterdir())
    finally:
        svc.cleanup()
