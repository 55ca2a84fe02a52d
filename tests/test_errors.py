"""The exception tree: HRESULTs, names, the JSON round trip the service and client use."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from pycertsrv import errors
from pycertsrv.errors import (
    AccessDenied,
    CertSrvError,
    SequenceError,
    error_from_json,
    hresult_from_win32,
    hresult_name,
)


def test_message_names_subject_then_hresult() -> None:
    e = SequenceError(None, "backup", "OpenFile called while edb00000003.log is open")
    assert str(e) == "backup: 0x8000FFFF E_UNEXPECTED: OpenFile called while edb00000003.log is open"
    assert e.hresult == errors.E_UNEXPECTED


@pytest.mark.parametrize("cls", list(errors.ERROR_CLASSES.values()))
def test_json_round_trip_keeps_class_and_hresult(cls: type[CertSrvError]) -> None:
    e = cls(0xC8000230, "CertSrvBackupPrepare", "no full backup")
    back = error_from_json(e.to_json())
    assert type(back) is cls
    assert (back.hresult, back.function, back.message) == (0xC8000230, "CertSrvBackupPrepare", "no full backup")


def test_pickle_round_trip() -> None:
    e = AccessDenied(None, "backup", "Operator role needed")
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, AccessDenied) and back.hresult == errors.E_ACCESSDENIED


def test_win32_wrapping_and_names() -> None:
    assert hresult_from_win32(0x20) == errors.ERROR_SHARING_VIOLATION
    assert hresult_from_win32(0) == 0
    assert hresult_name(0xC80001F9) == "JET_errBackupInProgress"
    assert hresult_name(0x12345678) == "HRESULT_12345678"


def test_unknown_error_class_falls_back_to_base() -> None:
    e = error_from_json({"error": "Nope", "hresult": 5, "message": "m"})
    assert type(e) is CertSrvError and e.hresult == 5


@pytest.mark.parametrize(("err", "win32", "name", "cls", "advice"), [
    (errno.ENOSPC, 112, "ERROR_DISK_FULL", CertSrvError, "free space"),
    (errno.EDQUOT, 1295, "ERROR_DISK_QUOTA_EXCEEDED", CertSrvError, "quota"),
    (errno.EROFS, 19, "ERROR_WRITE_PROTECT", CertSrvError, "choose a writable directory"),
    (errno.EACCES, 5, "E_ACCESSDENIED", AccessDenied, "this user may write"),
    (errno.EPERM, 5, "E_ACCESSDENIED", AccessDenied, "this user may write"),
    (errno.ENOENT, 2, "ERROR_FILE_NOT_FOUND", errors.NotFound, "check the path"),
    (errno.EIO, 1117, "ERROR_IO_DEVICE", CertSrvError, "check the disk"),
])
def test_file_system_errors_map_to_their_win32_hresult(err: int, win32: int, name: str, cls: type[CertSrvError],
                                                       advice: str) -> None:
    # spec §1.5: a Win32 error is wrapped as 0x8007xxxx; the errno's Win32 counterpart, never the errno itself.
    e = errors.from_oserror(OSError(err, os.strerror(err), "/srv/ca/set"), doing="cannot write the backup set")
    assert type(e) is cls
    assert e.hresult == hresult_from_win32(win32) and e.name == name
    assert e.function == "/srv/ca/set"
    assert e.message.startswith("cannot write the backup set: ") and advice in e.message
    assert str(e).startswith(f"/srv/ca/set: 0x{hresult_from_win32(win32):08X} {name}: ")


def test_file_system_error_names_the_target_of_a_copy_and_survives_unknown_errnos() -> None:
    e = errors.from_oserror(OSError(errno.ENOSPC, "No space left on device", "/set/ca.db", None, "/home/db/.x"))
    assert e.function == "/home/db/.x"  # the full device is the copy's destination's
    odd = errors.from_oserror(OSError(errno.ELOOP, "Too many levels of symbolic links", "/a"), "get")
    assert odd.hresult == errors.E_FAIL and odd.function == "get" and "symbolic links" in odd.message


def test_issue_14_node_errors_name_the_writer_and_survive_json_and_pickle() -> None:
    writer = {"holder": "ca2:4242", "epoch": 7, "endpoints": ["unix:/run/certsrv.sock", "ca2:8443"],
              "renewed_age_s": 0.4}
    e = errors.NotWriter.naming("postgresql://db/ca", writer)
    assert str(e) == ("postgresql://db/ca: 0x80071397 ERROR_HOST_NODE_NOT_RESOURCE_OWNER: this node is a standby; "
                      "the writer is ca2:4242 (epoch 7, at unix:/run/certsrv.sock, ca2:8443); send writes there, or "
                      "give --server every node")
    assert e.http_status == 503 and e.to_json()["writer"] == writer
    for back in (error_from_json(e.to_json()), pickle.loads(pickle.dumps(e))):
        assert isinstance(back, errors.NotWriter) and back.writer == writer and str(back) == str(e)
    free = errors.NotWriter.naming("db", {"holder": "", "epoch": 8, "endpoints": []})
    assert "no node holds the writer lease now (epoch 8)" in free.message
    u = errors.OutcomeUnknown(None, "submit", "it may or may not have been written")
    assert str(u).startswith("submit: 0x800706BE RPC_S_CALL_FAILED: ") and u.http_status == 503
    assert hresult_name(errors.RPC_S_CALL_FAILED_DNE) == "RPC_S_CALL_FAILED_DNE"
