"""The certbcli restore functions (spec §2.12–2.17) driven the Windows way (spec §3.3), via pycertsrv.certbcli."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pycertsrv import certbcli
from pycertsrv.backup.restore import restore_prepare
from pycertsrv.certbcli import CSEDB_RSTMAP
from pycertsrv.errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_DIRECTORY,
    ERROR_INVALID_HANDLE,
    ERROR_SHARING_VIOLATION,
    JET_ERR_RESTORE_IN_PROGRESS,
    CertSrvError,
)
from pycertsrv.spec import CSRESTORE_TYPE_FULL, CSRESTORE_TYPE_ONLINE
from pycertsrv.store import Store
from pycertsrv.store.registration import registration_path
from support import OPTS, add_requests, full_set, incremental_set, make_source, manifest, rows


def copy_logs(set_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in (set_dir / "DataBase").glob("edb*.log"):
        shutil.copyfile(p, dest / p.name)


def test_windows_flow_full_then_incrementals(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    try:
        add_requests(src, 20)
        h0, _ = full_set(src, tmp_path / "full")
        add_requests(src, 10)
        h1, _ = incremental_set(src, tmp_path / "i1", h0)
        add_requests(src, 10)
        _, want = incremental_set(src, tmp_path / "i2", h1)
    finally:
        src.close()
    home = tmp_path / "new"
    hbc = certbcli.CertSrvRestorePrepare(str(home), CSRESTORE_TYPE_FULL)
    try:
        locs = certbcli.CertSrvRestoreGetDatabaseLocations(hbc)
        assert [ord(x[0]) for x in locs] == [0x82, 0x83]  # no database known yet in an empty home
        m = manifest(tmp_path / "full")
        (home / "db").mkdir()
        target = home / "db" / Path(m["database"]).name
        shutil.copyfile(tmp_path / "full" / m["database"], target)
        logs = home / "restore-logs"
        copy_logs(tmp_path / "full", logs)
        rmap = [CSEDB_RSTMAP(m["locations"][0][1:], str(target))]
        certbcli.CertSrvRestoreRegister(hbc, str(home / "system"), str(home / "logs"), rmap, 1, str(logs),
                                        m["gen_low"], m["gen_high"])
        certbcli.CertSrvRestoreRegisterComplete(hbc, 0)
        for d in ("i2", "i1"):  # any order (spec §2.14)
            mi = manifest(tmp_path / d)
            copy_logs(tmp_path / d, logs)
            certbcli.CertSrvRestoreRegisterThroughFile(hbc, None, None, None, 0, str(logs), mi["gen_low"],
                                                       mi["gen_high"])
            certbcli.CertSrvRestoreRegisterComplete(hbc, 0)
        assert ord(certbcli.CertSrvRestoreGetDatabaseLocations(hbc)[0][0]) == 0x44
        with pytest.raises(CertSrvError) as ei:
            Store.open(home, OPTS)  # the restore context holds the home
        assert ei.value.hresult == ERROR_SHARING_VIOLATION
    finally:
        certbcli.CertSrvRestoreEnd(hbc)
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestoreEnd(hbc)
    assert ei.value.hresult == ERROR_INVALID_HANDLE
    assert not (home / "logs").exists() or not list((home / "logs").glob("edb*.log"))
    with Store.open(home, OPTS) as st:
        assert rows(st) == want
    assert logs.exists()  # an operator's backup log path outside HOME/restore is left alone


def test_prepare_refuses_running_ca_bad_flags_and_remote(tmp_path: Path) -> None:
    st = make_source(tmp_path / "ca")
    try:
        with pytest.raises(CertSrvError) as ei:
            certbcli.CertSrvRestorePrepare(str(tmp_path / "ca"), CSRESTORE_TYPE_FULL)
        assert ei.value.hresult == ERROR_SHARING_VIOLATION
    finally:
        st.close()
    for flags in (0, CSRESTORE_TYPE_ONLINE, 0x10):
        with pytest.raises(CertSrvError) as ei:
            restore_prepare(home=tmp_path / "ca", restore_flags=flags)
        assert ei.value.hresult == E_INVALIDARG
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestorePrepare("some-other-host.example\\CA", CSRESTORE_TYPE_FULL)
    assert ei.value.hresult == E_INVALIDARG


def test_sequencing_and_interlock(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    try:
        add_requests(src, 3)
        full_set(src, tmp_path / "full")
    finally:
        src.close()
    m = manifest(tmp_path / "full")
    home = tmp_path / "new"
    hbc = restore_prepare(home=home)
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestoreRegisterComplete(hbc, 0)  # nothing registered
    assert ei.value.hresult == E_UNEXPECTED
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestoreRegister(hbc, None, None, None, 0, str(tmp_path / "full" / "DataBase"), 1, 1)
    assert ei.value.hresult == ERROR_DIRECTORY  # an incremental before any full
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestoreRegister(hbc, None, None, [("a", "a.db")], 2, str(tmp_path), 1, 1)
    assert ei.value.hresult == E_INVALIDARG  # crstmap does not match the map
    with pytest.raises(CertSrvError) as ei:
        certbcli.CertSrvRestoreRegister(hbc, None, None, [("a", "/etc/passwd.db")], 1, str(tmp_path), 1, 1)
    assert ei.value.hresult == E_INVALIDARG  # the database must go to HOME/db
    certbcli.CertSrvRestoreRegister(hbc, None, None, [(m["locations"][0][1:], "x.db")], 1,
                                    str(tmp_path / "full" / "DataBase"), m["gen_low"], m["gen_high"])
    certbcli.CertSrvRestoreEnd(hbc)  # ended without completing: the registration stays and locks the start
    with pytest.raises(CertSrvError) as ei:
        Store.open(home, OPTS)
    assert ei.value.hresult in (JET_ERR_RESTORE_IN_PROGRESS, 0x80070002)
    before = registration_path(home).read_bytes()
    hbc2 = restore_prepare(home=home)
    try:
        with pytest.raises(CertSrvError) as ei:
            certbcli.CertSrvRestoreRegister(hbc2, None, None, [(m["locations"][0][1:], "x.db")], 1,
                                            str(tmp_path / "full" / "DataBase"), m["gen_low"], m["gen_high"])
        assert ei.value.hresult == JET_ERR_RESTORE_IN_PROGRESS  # spec §2.14 interlock
        assert registration_path(home).read_bytes() == before
    finally:
        certbcli.CertSrvRestoreEnd(hbc2)
    hbc3 = restore_prepare(home=home, force=True)
    try:
        certbcli.CertSrvRestoreRegister(hbc3, None, None, [(m["locations"][0][1:], "x.db")], 1,
                                        str(tmp_path / "full" / "DataBase"), m["gen_low"], m["gen_high"])
        certbcli.CertSrvRestoreRegisterComplete(hbc3, 0)
    finally:
        certbcli.CertSrvRestoreEnd(hbc3)
