"""plan_restore / run_restore in process over a real Authority, BackupManager and the backup writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from setlib import ca_rows

from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.restore_plan import plan_restore
from pycertsrv.backupset.restore_run import run_restore
from pycertsrv.backupset.writer import run_backup, write_p12
from pycertsrv.ca import Authority
from pycertsrv.ca.keys import load_private_key, same_public_key
from pycertsrv.errors import (
    ERROR_DIR_NOT_EMPTY,
    ERROR_INVALID_DATA,
    ERROR_INVALID_PASSWORD,
    ERROR_SHARING_VIOLATION,
    JET_ERR_MISSING_FULL_BACKUP,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    CertSrvError,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
)
from pycertsrv.store import logfile
from support import backup_manager_fixture, ca_fixture, issue, openssl_verify, tick

PW = b"s3cret pw"


ca = ca_fixture("Restore Test CA")
mgr = backup_manager_fixture("mgr")


def backup(mgr: BackupManager, ca: Authority, out: Path, kind: str = "full") -> dict[str, Any]:
    """Take a backup with the real writer; returns the source's rows at that moment."""
    moment = ca_rows(ca.store)
    run_backup(lambda k: LocalSession(mgr, k), out, kind=kind, password=PW, home=ca.home, keep_log=True)
    return moment


def tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()} if p.exists() else {}


def test_full_set_into_new_home(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    serials = issue(ca, 12)
    ca.revoke(serials[0], "keyCompromise")
    ca.publish_crl()
    want = backup(mgr, ca, tmp_path / "full")
    issue(ca, 3, "after")  # not in the set
    new = tmp_path / "new"
    plan = plan_restore([tmp_path / "full"], home=new, password=PW)
    assert plan.to_json()["config"]["action"] == "restore"
    res = run_restore(plan, password=PW)
    assert res.key_written and res.config_written and res.registration["state"] == "complete"
    key_file = new / "private" / "ca.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key_file.read_bytes()
    assert (new / "publish" / "ca.crl").is_file() or any((new / "publish").iterdir())
    with Authority.open(new) as r:
        assert ca_rows(r.store) == want
        assert r.certificate == ca.certificate
        assert r.store.get("setting", "backup_requires_full")["value"] == "1"
        openssl_verify(new / "publish" / "ca.crt", r.get_certificate(serials[5]), tmp_path)
        assert r.get_request_by_serial(serials[0]).disposition == 21 if hasattr(r, "get_request_by_serial") else True
        # The restored CA issues (key usable) and its new certificates verify against the restored cert.
        more = issue(r, 1, "restored")
        openssl_verify(new / "publish" / "ca.crt", r.get_certificate(more[0]), tmp_path)


def test_full_plus_incrementals_out_of_order_and_next_backup_full(ca: Authority, mgr: BackupManager,
                                                                  tmp_path: Path) -> None:
    issue(ca, 5)
    backup(mgr, ca, tmp_path / "full")
    issue(ca, 4, "i1")
    backup(mgr, ca, tmp_path / "i1", "incremental")
    s = issue(ca, 4, "i2")
    ca.revoke(s[1])
    want = backup(mgr, ca, tmp_path / "i2", "incremental")
    new = tmp_path / "new"
    plan = plan_restore([tmp_path / "i2", tmp_path / "full", tmp_path / "i1"], home=new, password=PW)
    assert [x.kind for x in plan.sets] == ["full", "incremental", "incremental"]
    run_restore(plan, password=PW)
    with Authority.open(new) as r:
        assert ca_rows(r.store) == want
        m2 = BackupManager(r, r.home, 600)
        try:
            # spec §2.17: after a restore the next backup must be full.
            with pytest.raises(Conflict) as ei:
                run_backup(lambda k: LocalSession(m2, k), tmp_path / "bad", kind="incremental", database_only=True,
                           password=PW)
            assert ei.value.hresult == JET_ERR_MISSING_FULL_BACKUP
            run_backup(lambda k: LocalSession(m2, k), tmp_path / "f2", database_only=True, password=PW)
            assert r.store.get("setting", "backup_requires_full") is None
            issue(r, 1, "post")
            run_backup(lambda k: LocalSession(m2, k), tmp_path / "i3", kind="incremental", database_only=True,
                           password=PW)
        finally:
            m2.close()


def test_until_between_two_issuances(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 3)
    backup(mgr, ca, tmp_path / "full")
    issue(ca, 3, "kept")
    tick()
    cut = logfile.us_to_datetime(logfile.now_us())
    want = ca_rows(ca.store)
    tick()
    issue(ca, 3, "dropped")
    backup(mgr, ca, tmp_path / "i1", "incremental")
    new = tmp_path / "new"
    plan = plan_restore([tmp_path / "full", tmp_path / "i1"], home=new, until=cut.isoformat(), password=PW)
    assert plan.until_us is not None
    run_restore(plan, password=PW)
    with Authority.open(new) as r:
        assert ca_rows(r.store) == want


def test_until_before_snapshot_refused(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 2)
    early = logfile.us_to_datetime(logfile.now_us())
    tick()
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "full")
    with pytest.raises(InvalidArgument) as ei:
        plan_restore([tmp_path / "full"], home=tmp_path / "new", until=early, password=PW)
    assert "snapshot" in ei.value.message


def test_wrong_password_writes_nothing(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "full")
    new = tmp_path / "new"
    plan = plan_restore([tmp_path / "full"], home=new, password=PW)
    with pytest.raises(InvalidArgument) as ei:
        run_restore(plan, password=b"wrong")
    assert ei.value.hresult == ERROR_INVALID_PASSWORD
    assert ".p12" in ei.value.function
    assert tree(new) == {}
    with pytest.raises(InvalidArgument) as ei:
        plan_restore([tmp_path / "full"], home=new, password=b"wrong")  # checked at planning time too
    assert ei.value.hresult == ERROR_INVALID_PASSWORD


def test_running_ca_and_non_empty_target(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "full")
    before = tree(ca.home.root / "db")
    plan = plan_restore([tmp_path / "full"], home=ca.home.root, force=True, password=PW)
    assert plan.running
    with pytest.raises(Conflict) as ei:
        run_restore(plan, password=PW)  # the CA holds its home
    assert ei.value.hresult == ERROR_SHARING_VIOLATION
    assert tree(ca.home.root / "db") == before


def test_in_place_needs_force_then_rolls_forward(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 3)
    backup(mgr, ca, tmp_path / "full")
    issue(ca, 3, "after")
    want = ca_rows(ca.store)
    home = ca.home.root
    ca.close()
    mgr.close()
    plan = plan_restore([tmp_path / "full"], home=home, password=PW)
    assert plan.not_empty
    with pytest.raises(Conflict) as ei:
        run_restore(plan, password=PW)
    assert ei.value.hresult == ERROR_DIR_NOT_EMPTY
    assert not (home / "system" / "restore.json").exists()
    plan = plan_restore([tmp_path / "full"], home=home, force=True, password=PW)
    res = run_restore(plan, password=PW)
    assert res.superseded  # the old database file was moved aside, not deleted
    with Authority.open(home) as r:
        assert ca_rows(r.store) == want  # the live logs rolled forward past the set


def test_flipped_byte_refused_naming_file(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 3)
    backup(mgr, ca, tmp_path / "full")
    for victim in ("log", "database"):
        d = tmp_path / f"copy-{victim}"
        shutil.copytree(tmp_path / "full", d)
        db = d / "DataBase"
        f = sorted(db.glob("edb*.log"))[0] if victim == "log" else next(db.glob("*.db"))
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x40
        f.write_bytes(bytes(data))
        new = tmp_path / f"new-{victim}"
        with pytest.raises(CorruptData) as ei:
            plan_restore([d], home=new, password=PW)
        assert ei.value.hresult == ERROR_INVALID_DATA
        assert f.name in ei.value.function
        assert not new.exists()


def test_missing_incremental_in_the_middle(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "full")
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "i1", "incremental")
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "i2", "incremental")
    with pytest.raises(CorruptData) as ei:
        plan_restore([tmp_path / "full", tmp_path / "i2"], home=tmp_path / "new", password=PW)
    assert ei.value.hresult == JET_ERR_MISSING_RESTORE_LOG_FILES
    assert "edb" in ei.value.message and "missing" in ei.value.message
    assert not (tmp_path / "new").exists()


def test_key_only_and_encrypted_key(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 1)
    backup(mgr, ca, tmp_path / "full")
    new = tmp_path / "new"
    # A database-only restore first (the key comes separately), then the key with a passphrase.
    run_restore(plan_restore([tmp_path / "full"], home=new, database_only=True, password=PW))
    assert not (new / "private" / "ca.key").exists()
    plan = plan_restore([tmp_path / "full"], home=new, key_only=True, password=PW)
    res = run_restore(plan, password=PW, key_passphrase=b"key pass")
    assert res.key_written and res.registration is None
    pem = (new / "private" / "ca.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    with Authority.open(new, passphrase=b"key pass") as r:
        assert r.certificate == ca.certificate
    with pytest.raises(Conflict) as ei:  # the key exists now
        run_restore(plan_restore([tmp_path / "full"], home=new, key_only=True, password=PW), password=PW)
    assert ei.value.hresult == ERROR_DIR_NOT_EMPTY


def test_failure_while_placing_marks_failed(ca: Authority, mgr: BackupManager, tmp_path: Path) -> None:
    issue(ca, 2)
    backup(mgr, ca, tmp_path / "full")
    # A home that holds something already: the registration stays, marked failed, and the CA refuses to
    # start naming the set and the command that finishes the restore.
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("the operator's\n")
    plan = plan_restore([tmp_path / "full"], home=old, password=PW)
    log = plan.logs[0][0]
    saved = log.read_bytes()
    os.unlink(log)  # the set loses a file after it was checked
    with pytest.raises(CertSrvError) as ei:
        run_restore(plan, password=PW)
    assert "unfinished restore from" in ei.value.message and "--force" in ei.value.message
    with pytest.raises(CertSrvError) as ei:
        Authority.open(old)
    assert f"an unfinished restore from {tmp_path / 'full'} was found: it failed" in ei.value.message
    assert f"certsrv restore {tmp_path / 'full'} --home {old} --force" in ei.value.message
    assert (old / "notes.txt").read_text() == "the operator's\n"
    # A home the restore made: the failed restore removes all of it.
    new = tmp_path / "new"
    log.write_bytes(saved)
    plan = plan_restore([tmp_path / "full"], home=new, password=PW)
    os.unlink(log)
    with pytest.raises(CertSrvError) as ei:
        run_restore(plan, password=PW)
    assert f"nothing was left in {new}" in ei.value.message
    assert not new.exists()
    # With the file back, the restore finishes over the failed one (--force) and the CA opens.
    log.write_bytes(saved)
    run_restore(plan_restore([tmp_path / "full"], home=old, force=True, password=PW), password=PW)
    with Authority.open(old) as r:
        assert r.certificate == ca.certificate


@pytest.mark.parametrize("victim", ["log", "database", "p12"])
def test_file_swapped_after_verification_is_refused(ca: Authority, mgr: BackupManager, tmp_path: Path,
                                                    victim: str) -> None:
    """A file changed on the backup storage between plan (verified) and copy is caught on the bytes copied."""
    issue(ca, 3)
    backup(mgr, ca, tmp_path / "full")
    new = tmp_path / "new"
    plan = plan_restore([tmp_path / "full"], home=new, password=PW)
    if victim == "log":
        f = plan.logs[0][0]
    elif victim == "database":
        assert plan.database_source is not None
        f = plan.database_source
    else:
        assert plan.p12 is not None
        f = plan.p12
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(f, 0o600)
    f.write_bytes(bytes(data))
    with pytest.raises(CertSrvError) as ei:
        run_restore(plan, password=PW)
    assert ei.value.hresult == 0x80090006 and str(f) in ei.value.function  # NTE_BAD_SIGNATURE, naming the file
    assert "after the set was verified" in ei.value.message
    assert not list(new.rglob("*.restoring"))
    # The p12 is checked before anything is placed; a database or log copy fails while placing, and a home the
    # restore made is then removed whole (issue 10): nothing of half a restore is left to start from.
    assert not new.exists()


def test_key_only_set_is_authenticated_and_its_listed_p12_is_used(ca: Authority, mgr: BackupManager,
                                                                  tmp_path: Path) -> None:
    k = tmp_path / "keyset"
    run_backup(lambda kind: LocalSession(mgr, kind), k, key_only=True, password=PW, home=ca.home)
    # Another CA's PKCS#12 under the same password, planted beside the genuine one (sorted first).
    with Authority.init(tmp_path / "evil", "Evil CA") as evil:
        write_p12(k / "AAA.p12", "Evil CA", evil._key, [evil.certificate], PW)  # type: ignore[attr-defined]
    plan = plan_restore([k], home=tmp_path / "new", key_only=True, password=PW)
    assert plan.p12 == k / "Restore Test CA.p12"
    res = run_restore(plan, password=PW)
    assert res.key_written
    restored = load_private_key(tmp_path / "new" / "private" / "ca.key", None)
    assert same_public_key(ca.certificate.public_key(), restored.public_key())
    # The .p12 path itself works; the planted one is not part of the set.
    assert plan_restore([plan.p12], home=tmp_path / "new2", key_only=True, password=PW).p12 == plan.p12
    with pytest.raises(NotFound):
        plan_restore([k / "AAA.p12"], home=tmp_path / "new3", key_only=True, password=PW)
    # A key-only set given to a database restore: pointed at --key-only.
    with pytest.raises(NotFound) as en:
        plan_restore([k], home=tmp_path / "new5", password=PW)
    assert "--key-only" in en.value.message
    # Swapping the genuine file for the other CA's (manifest rehashed by the forger) breaks the authenticator.
    shutil.copyfile(k / "AAA.p12", plan.p12)
    mpath = k / "DataBase" / "certbkxp.dat"
    doc = json.loads(mpath.read_text())
    doc["files"][0].update(size=plan.p12.stat().st_size, sha256=hashlib.sha256(plan.p12.read_bytes()).hexdigest())
    os.chmod(mpath, 0o600)
    mpath.write_text(json.dumps(doc))
    with pytest.raises(CorruptData) as ei:
        plan_restore([k], home=tmp_path / "new4", key_only=True, password=PW)
    assert ei.value.hresult == 0x80090006 and str(k) in ei.value.function
