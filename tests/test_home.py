"""The private home's rules as functions (issue 9): tightening an old home never widens anything, and a
bad ``socket_group`` is a clear error. (Second-uid behaviour: tests/service/test_private_home.py.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pycertsrv import config
from pycertsrv.errors import E_INVALIDARG, InvalidArgument
from pycertsrv.home import resolve_group, secure_home


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_secure_home_takes_bits_away_and_never_adds(tmp_path: Path) -> None:
    root = tmp_path / "ca"
    for d in ("db", "logs", "publish", "private"):
        (root / d).mkdir(parents=True)
    files = {"db/x.db": 0o644, "db/x.db-wal": 0o666, "logs/edb00000001.log": 0o444, "certsrv.toml": 0o640,
             "publish/ca.crt": 0o666, "publish/ca.crl": 0o600, "private/ca.key": 0o600}
    for name, mode in files.items():
        (root / name).write_bytes(b"x")
        (root / name).chmod(mode)
    for d in ("db", "logs", "private"):
        (root / d).chmod(0o755)
    (root / "publish").chmod(0o777)
    root.chmod(0o755)
    (root / "link").symlink_to("/etc/passwd")
    changed = secure_home(root)
    assert sorted(c.split()[0] for c in changed) == sorted(
        [".", "certsrv.toml", "db", "db/x.db", "db/x.db-wal", "logs", "logs/edb00000001.log", "private", "publish",
         "publish/ca.crt"])
    assert _mode(root) == 0o700
    assert [_mode(root / d) for d in ("db", "logs", "private", "publish")] == [0o700, 0o700, 0o700, 0o755]
    assert {n: _mode(root / n) for n in files} == {
        "db/x.db": 0o600, "db/x.db-wal": 0o600, "logs/edb00000001.log": 0o400, "certsrv.toml": 0o600,
        "publish/ca.crt": 0o644, "publish/ca.crl": 0o600, "private/ca.key": 0o600}  # 0400 and 0600 stay
    assert _mode(Path("/etc/passwd")) == 0o644  # the symlink was not followed
    assert secure_home(root) == []  # a second pass finds nothing
    root.chmod(0o750)
    assert secure_home(root, group_traverse=True) == [". 0750->0710"]  # socket_group: members may traverse


@pytest.mark.parametrize("value", ["-1", '""', '"  "'])
def test_bad_socket_group_is_refused_at_load(tmp_path: Path, value: str) -> None:
    (tmp_path / "certsrv.toml").write_text(f"[service]\nsocket_group = {value}\n")
    with pytest.raises(InvalidArgument) as ei:
        config.load(tmp_path)
    assert ei.value.hresult == E_INVALIDARG and "service.socket_group" in str(ei.value)


def test_socket_group_names_and_gids() -> None:
    assert resolve_group(0) == 0 and resolve_group("0") == 0 and resolve_group("root") == 0
    with pytest.raises(InvalidArgument) as ei:
        resolve_group("no-such-group-here")
    assert ei.value.hresult == E_INVALIDARG and "groupadd no-such-group-here" in ei.value.message
