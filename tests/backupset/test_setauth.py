"""The set authenticator itself (pycertsrv.backupset.setauth): what it covers and what it refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pycertsrv.backupset.setauth import BadAuthenticator, WrongPassword, authenticate, seal
from pycertsrv.errors import ERROR_INVALID_PASSWORD, NTE_BAD_SIGNATURE, InvalidArgument

DOC: dict[str, Any] = {
    "format": "pycertsrv-backup/1", "kind": "full", "ca_name": "T", "identity": "ab" * 16, "created": "now",
    "gen_low": 1, "gen_high": 3, "snapshot_lsn": 7, "database": "DataBase/T.db", "locations": [],
    "files": [{"path": "DataBase/T.db", "size": 10, "sha256": "00" * 32, "role": "database"}],
    "set_id": "cd" * 16, "base": None,
}


def test_round_trip_and_every_field_is_covered() -> None:
    sealed = seal(DOC, b"pw")
    assert authenticate(sealed, b"pw", "set") == sealed["auth"]["mac"]
    assert seal(DOC, b"pw")["auth"]["salt"] != sealed["auth"]["salt"]  # a fresh salt per set
    edits = [("kind", "incremental"), ("gen_high", 4), ("snapshot_lsn", 6), ("identity", "ef" * 16),
             ("set_id", "00" * 16), ("base", {"set_id": "x", "mac": "y"}), ("extra", 1)]
    for key, value in edits:
        forged = copy.deepcopy(sealed)
        forged[key] = value
        with pytest.raises(BadAuthenticator) as ei:
            authenticate(forged, b"pw", "set")
        assert ei.value.hresult == NTE_BAD_SIGNATURE, key
    forged = copy.deepcopy(sealed)
    forged["files"][0]["sha256"] = "11" * 32
    with pytest.raises(BadAuthenticator):
        authenticate(forged, b"pw", "set")


def test_wrong_or_missing_password_and_missing_authenticator() -> None:
    sealed = seal(DOC, b"pw")
    for pw in (b"other", None):
        with pytest.raises(WrongPassword) as ei:
            authenticate(sealed, pw, "set")
        assert ei.value.hresult == ERROR_INVALID_PASSWORD
    with pytest.raises(BadAuthenticator) as eb:
        authenticate(DOC, b"pw", "set")
    assert "no authenticator" in eb.value.message
    with pytest.raises(InvalidArgument):
        seal(DOC, b"")


@pytest.mark.parametrize("field,value", [("n", 1 << 30), ("n", 1 << 4), ("n", 3 << 14), ("r", 1), ("p", 64),
                                         ("alg", "none"), ("kdf", "pbkdf2"), ("salt", "zz"), ("mac", "00")])
def test_parameters_a_forger_chooses_are_bounded(field: str, value: Any) -> None:
    """A forged manifest cannot make a verifier spend gigabytes of memory (n=2^30) or accept a weaker scheme."""
    forged = seal(DOC, b"pw")
    forged["auth"][field] = value
    with pytest.raises(BadAuthenticator):  # refused before any key derivation (n=2^30 would need 1 TiB)
        authenticate(forged, b"pw", "set")
