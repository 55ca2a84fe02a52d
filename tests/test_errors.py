"""The exception tree: HRESULTs, names, the JSON round trip the service and client use."""

from __future__ import annotations

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
