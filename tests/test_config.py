"""certsrv.toml: round trip, defaults, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycertsrv import config
from pycertsrv.errors import E_INVALIDARG, ERROR_FILE_NOT_FOUND, InvalidArgument, NotFound


def test_round_trip_through_disk(tmp_path: Path) -> None:
    cfg = config.Config()
    cfg.ca.name = 'Example "Root" CA \\ 1'
    cfg.policy.crl_distribution_points = ["http://crl.example/ca.crl"]
    cfg.roles.append(config.RoleGrant(principal="uid:1000", roles=["Operator", "Auditor"]))
    config.save(tmp_path, cfg)
    back = config.load(tmp_path)
    assert back == cfg
    assert (tmp_path / "certsrv.toml").stat().st_mode & 0o777 == 0o600  # a private home (issue 9)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as ei:
        config.load(tmp_path)
    assert ei.value.hresult == ERROR_FILE_NOT_FOUND and "certsrv.toml" in str(ei.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[ca\nname=1", "not valid TOML"),
        ("[ca]\nkey_type = 'dsa-512'\n", "ca.key_type"),
        ("[store]\nlog_size = 10\n", "store.log_size"),
        ("[nosuch]\nx = 1\n", "nosuch"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "certsrv.toml").write_text(text)
    with pytest.raises(InvalidArgument) as ei:
        config.load(tmp_path)
    assert ei.value.hresult == E_INVALIDARG
    assert needle in str(ei.value)


def test_store_lease_ttl_defaults_to_ten_seconds_and_is_checked(tmp_path: Path) -> None:
    from pycertsrv.store import StoreOptions
    from pycertsrv.store.postgres import LEASE_TTL

    assert config.Config().store.lease_ttl == 10.0 == StoreOptions().lease_ttl == LEASE_TTL  # issue 14: at most 10 s
    (tmp_path / "certsrv.toml").write_text('[store]\nlease_ttl = 4.5\n')
    assert config.load(tmp_path).store.lease_ttl == 4.5
    (tmp_path / "certsrv.toml").write_text('[store]\nlease_ttl = 0\n')
    with pytest.raises(InvalidArgument) as bad:
        config.load(tmp_path)
    assert "lease_ttl" in str(bad.value)
