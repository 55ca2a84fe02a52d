"""run_backup / verify_backup in process (LocalSession over a real Authority and store)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from pycertsrv.backup.history import backup_history
from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.manifest import read_manifest
from pycertsrv.backupset.stream import Pacer
from pycertsrv.backupset.verify import verify_backup
from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from pycertsrv.errors import E_INVALIDARG, ERROR_DIR_NOT_EMPTY, ERROR_DISK_FULL, CertSrvError
from pycertsrv.home import Home
from pycertsrv.store import hard_recover, list_generations
from support import backup_manager_fixture, ca_fixture, db_query, issue

ca = ca_fixture("Writer Test CA")
cmgr = backup_manager_fixture("cmgr")


PW = b"s3cret"


def factory(m: BackupManager) -> Any:
    return lambda kind: LocalSession(m, kind)


def restore(set_dirs: list[Path], scratch: Path) -> Path:
    """Hard-recover the full set (first) plus incrementals into a scratch copy."""
    scratch.mkdir()
    full = read_manifest(set_dirs[0])
    assert full.database is not None
    db = scratch / Path(full.database).name
    shutil.copyfile(set_dirs[0] / full.database, db)
    for d in set_dirs:
        m = read_manifest(d)
        hard_recover(db, d / "DataBase", m.gen_low, m.gen_high, identity=full.identity)
    return db


def test_full_set_layout_key_restore_and_truncation(ca: Authority, cmgr: BackupManager, tmp_path: Path) -> None:
    ca.publish_crl()
    serials = issue(ca, 5)
    out = tmp_path / "bk"
    res = run_backup(factory(cmgr), out, password=PW, home=ca.home)
    m = read_manifest(out)
    assert m.kind == "full" and m.ca_name == "Writer Test CA" and m.identity == ca.store.identity
    assert (out / "Writer Test CA.p12").is_file()
    assert (out / "DataBase" / ca.store.db_path.name).is_file()
    assert (out / "Config" / "certsrv.toml").read_bytes() == ca.home.config.read_bytes()
    assert {f.role for f in m.files} == {"key", "database", "log", "dynamic", "config"}
    assert any(p.suffix == ".crl" for p in (out / "Dynamic").iterdir())
    assert [ord(x[0]) for x in m.locations] == [0x44, 0x82, 0x83]
    assert not any(p.name.startswith(".partial") for p in out.iterdir())
    rep = verify_backup(out, PW)
    assert rep.ok, rep.problems
    # the key: password-protected PKCS#12 with the CA certificate
    raw = (out / "Writer Test CA.p12").read_bytes()
    key, cert, _ = pkcs12.load_key_and_certificates(raw, b"s3cret")
    assert cert is not None and cert == ca.certificate and key is not None
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(raw, b"wrong")
    # logs were truncated: the live log directory keeps only generations after the backup
    assert res.truncated and all(g > m.gen_high for g in list_generations(ca.store.log_dir))
    hist = backup_history(ca.store)
    assert hist[-1].truncated and hist[-1].gen_high == m.gen_high
    db = restore([out], tmp_path / "scratch")
    got = {r[0] for r in db_query(db, "SELECT serial FROM request WHERE serial IS NOT NULL")}
    assert set(serials) <= got


def test_incremental_chain_restores_everything(ca: Authority, cmgr: BackupManager, tmp_path: Path) -> None:
    first = issue(ca, 3, "a")
    run_backup(factory(cmgr), tmp_path / "full", database_only=True, keep_log=True, home=ca.home, password=PW)
    second = issue(ca, 3, "b")
    r1 = run_backup(factory(cmgr), tmp_path / "inc1", kind="incremental", database_only=True, password=PW)
    third = issue(ca, 3, "c")
    run_backup(factory(cmgr), tmp_path / "inc2", kind="incremental", database_only=True, password=PW)
    mf, m1, m2 = (read_manifest(tmp_path / d) for d in ("full", "inc1", "inc2"))
    assert r1.truncated is None and m1.kind == "incremental" and m1.database is None
    assert m1.gen_low == mf.gen_high + 1 and m2.gen_low == m1.gen_high + 1
    assert not (tmp_path / "inc1" / "Writer Test CA.p12").exists()
    for d in ("full", "inc1", "inc2"):
        assert verify_backup(tmp_path / d, PW).ok
    db = restore([tmp_path / "full", tmp_path / "inc1", tmp_path / "inc2"], tmp_path / "scratch")
    got = {r[0] for r in db_query(db, "SELECT serial FROM request")}
    assert set(first + second + third) <= got


def test_non_empty_directory_needs_force(ca: Authority, cmgr: BackupManager, tmp_path: Path) -> None:
    out = tmp_path / "bk"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CertSrvError) as e:
        run_backup(factory(cmgr), out, database_only=True, password=PW)
    assert e.value.hresult == ERROR_DIR_NOT_EMPTY
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert cmgr.status() is None
    run_backup(factory(cmgr), out, database_only=True, force=True, password=PW)
    assert verify_backup(out, PW).ok


class Exploding:
    """A session that fails after ``after`` reads (a vanished network, a full disk...)."""

    def __init__(self, inner: LocalSession, after: int) -> None:
        self.inner = inner
        self.after = after
        self.kind, self.ca_name, self.identity = inner.kind, inner.ca_name, inner.identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, n: int) -> bytes:
        self.after -= 1
        if self.after < 0:
            raise OSError(28, "No space left on device")
        return self.inner.read(n)

    def __enter__(self) -> Exploding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_failed_backup_leaves_no_set(ca: Authority, cmgr: BackupManager, tmp_path: Path, after: int) -> None:
    issue(ca, 2)
    out = tmp_path / "bk"
    before = set(list_generations(ca.store.log_dir))
    with pytest.raises(CertSrvError) as ei:  # the file system error as its HRESULT (issue 10)
        run_backup(lambda kind: Exploding(LocalSession(cmgr, kind), after), out, password="pw", home=ca.home,
                   chunk=4096)
    assert ei.value.hresult == ERROR_DISK_FULL and ei.value.function == str(out)
    assert not out.exists()  # the run created it: nothing of it is left
    assert cmgr.status() is None  # the session was ended
    assert backup_history(ca.store) == []
    assert before <= set(list_generations(ca.store.log_dir))  # nothing truncated


def test_force_over_old_set_failure_leaves_nothing_complete(ca: Authority, cmgr: BackupManager,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "bk"
    run_backup(factory(cmgr), out, database_only=True, keep_log=True, password=PW)
    with pytest.raises(CertSrvError) as ei:
        run_backup(lambda kind: Exploding(LocalSession(cmgr, kind), 1), out, database_only=True, force=True,
                   password=PW)
    assert ei.value.hresult == ERROR_DISK_FULL
    assert out.is_dir()  # it was there before this run: kept
    assert not (out / "DataBase" / "certbkxp.dat").exists()
    assert not verify_backup(out, PW).ok


def test_key_only_and_database_only(ca: Authority, cmgr: BackupManager, tmp_path: Path) -> None:
    r = run_backup(factory(cmgr), tmp_path / "k", key_only=True, password=PW, home=ca.home)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["DataBase", "Writer Test CA.p12"]
    assert r.p12 is not None and r.manifest is not None and r.manifest.kind == "key"
    # the key-only set's manifest lists (and authenticates) the PKCS#12 and nothing else
    assert [f.role for f in read_manifest(tmp_path / "k").files] == ["key"]
    assert verify_backup(tmp_path / "k", PW).ok and not verify_backup(tmp_path / "k", b"other").ok
    assert cmgr.status() is None and backup_history(ca.store) == []
    run_backup(factory(cmgr), tmp_path / "d", database_only=True, password=PW)
    assert not (tmp_path / "d" / "Writer Test CA.p12").exists()
    with pytest.raises(CertSrvError):
        run_backup(factory(cmgr), tmp_path / "x", password=None, home=ca.home)  # every set needs a password
    with pytest.raises(CertSrvError):
        run_backup(factory(cmgr), tmp_path / "y", database_only=True, password=None)  # database-only ones too
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def tamper_cases() -> list[str]:
    return ["flip_log", "drop_log", "extra_file", "bad_identity", "flip_db", "bad_manifest", "no_manifest"]


@pytest.mark.parametrize("case", tamper_cases())
def test_verify_names_the_bad_file(ca: Authority, cmgr: BackupManager, tmp_path: Path, case: str) -> None:
    issue(ca, 3)
    out = tmp_path / "bk"
    run_backup(factory(cmgr), out, database_only=True, keep_log=True, password=PW)
    m = read_manifest(out)
    logs = [f.path for f in m.files_by_role("log")]
    mpath = out / "DataBase" / "certbkxp.dat"
    expect = ""
    if case == "flip_log":
        p = out / logs[0]
        data = bytearray(p.read_bytes())
        data[100] ^= 0xFF
        os.chmod(p, 0o644)
        p.write_bytes(bytes(data))
        expect = logs[0]
    elif case == "drop_log":
        (out / logs[-1]).unlink()
        expect = logs[-1]
    elif case == "extra_file":
        (out / "DataBase" / "edb000000FF.log").write_bytes(b"x")
        expect = "DataBase/edb000000FF.log"
    elif case == "bad_identity":
        doc = json.loads(mpath.read_text())
        doc["identity"] = "00" * 16
        mpath.write_text(json.dumps(doc))
        expect = "DataBase/certbkxp.dat"  # the manifest no longer matches its authenticator
    elif case == "flip_db":
        assert m.database is not None
        p = out / m.database
        data = bytearray(p.read_bytes())
        data[-10] ^= 0xFF
        p.write_bytes(bytes(data))
        expect = m.database
    elif case == "bad_manifest":
        mpath.write_text("{not json")
        expect = "DataBase/certbkxp.dat"
    elif case == "no_manifest":
        mpath.unlink()
        expect = "DataBase/certbkxp.dat"
    rep = verify_backup(out, PW)
    assert not rep.ok
    assert expect in {p.path for p in rep.problems}, rep.problems
    assert rep.to_json()["ok"] is False


def test_home_of_another_ca_is_refused(cmgr: BackupManager, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", "Other CA")
    other.close()
    with pytest.raises(CertSrvError) as e:
        run_backup(factory(cmgr), tmp_path / "bk", password="pw", home=Home.at(tmp_path / "other"))
    assert "Other CA" in e.value.message
    assert not (tmp_path / "bk").exists()  # the directory the run made is removed again
    assert cmgr.status() is None


def test_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    a = Authority.init(tmp_path / "enc", "Encrypted CA", passphrase=b"key-pass")
    try:
        m = BackupManager(a, a.home, 600)
        with pytest.raises(CertSrvError):
            run_backup(factory(m), tmp_path / "bad", password="pw", home=a.home, key_passphrase=b"wrong")
        assert m.status() is None and not (tmp_path / "bad").exists()
        run_backup(factory(m), tmp_path / "ok", password="pw", home=a.home, key_passphrase=b"key-pass")
        key, cert, _ = pkcs12.load_key_and_certificates((tmp_path / "ok" / "Encrypted CA.p12").read_bytes(), b"pw")
        assert cert == a.certificate and key is not None
    finally:
        a.close()


def test_pacer_holds_the_average_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pace = Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
    pace(500)
    pace(500)
    assert slept == [0.5, 0.5] and now[0] == 101.0  # 1000 bytes took one second
    now[0] += 5.0  # a slow stretch: bytes that are late are not slept for
    pace(2000)
    assert slept == [0.5, 0.5]
    pace(5000)  # ... but the average is held: 8000 bytes from t=100 are due at t=108
    assert now[0] == 108.0
    Pacer(None, clock=lambda: now[0], sleep=sleep)(10**9)  # no limit: never sleeps
    assert len(slept) == 3


@pytest.mark.parametrize("chunk", [1000, 7777, 1 << 20])
def test_any_buffer_size_gives_the_same_verified_set(ca: Authority, cmgr: BackupManager, tmp_path: Path,
                                                     chunk: int) -> None:
    serials = issue(ca, 4)
    out = tmp_path / "bk"
    res = run_backup(factory(cmgr), out, database_only=True, keep_log=True, chunk=chunk, max_rate=1 << 30,
                     password=PW)
    rep = verify_backup(out, PW)
    assert rep.ok, rep.problems  # every file's SHA-256 and size as the manifest says
    assert res.manifest is not None
    db = restore([out], tmp_path / "scratch")
    assert set(serials) <= {r[0] for r in db_query(db, "SELECT serial FROM request WHERE serial IS NOT NULL")}


def test_bad_max_rate_is_refused_before_anything(ca: Authority, cmgr: BackupManager, tmp_path: Path) -> None:
    with pytest.raises(CertSrvError) as e:
        run_backup(factory(cmgr), tmp_path / "bk", database_only=True, max_rate=0, password=PW)
    assert e.value.hresult == E_INVALIDARG and "--max-rate" in str(e.value)
    assert not (tmp_path / "bk").exists() and cmgr.status() is None
