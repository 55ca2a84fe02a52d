"""Issue 9, finding 5a: BackupOpenFile streams only the listed regular file itself: a listed name that has
become a hard link to another file of the home, or that is reached through a symlinked directory, is refused
(E_ACCESSDENIED) and nothing is opened. (The same attack through the real service: tests/service/
test_private_home.py::test_open_file_refuses_a_hard_link_to_the_key.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pycertsrv.backup.session import BackupManager
from pycertsrv.errors import E_ACCESSDENIED, E_UNEXPECTED, CertSrvError
from pycertsrv.home import Home

SECRET = b"-----BEGIN PRIVATE KEY-----\nnot for the backup stream\n-----END PRIVATE KEY-----\n"


def _listed(mgr: BackupManager, home: Home) -> tuple[str, Path]:
    home.publish_dir.mkdir(parents=True, exist_ok=True)
    (home.publish_dir / "ca.crl").write_bytes(b"crl")
    home.private_dir.mkdir(mode=0o700, exist_ok=True)
    (home.private_dir / "ca.key").write_bytes(SECRET)
    h = mgr.prepare("op", 0, 1)
    dyn = mgr.dynamic_files(h)
    assert str(home.publish_dir / "ca.crl") in dyn
    return h, home.publish_dir / "ca.crl"


def _refused(mgr: BackupManager, h: str, name: Path, why: str) -> None:
    with pytest.raises(CertSrvError) as ei:
        mgr.open_file(h, str(name))
    assert ei.value.hresult == E_ACCESSDENIED and why in ei.value.message, ei.value
    with pytest.raises(CertSrvError) as ei:
        mgr.read(h, 1 << 16)  # nothing was opened
    assert ei.value.hresult == E_UNEXPECTED


def test_hard_link_to_a_private_file_is_refused(mgr: BackupManager, home: Home) -> None:
    h, crl = _listed(mgr, home)
    crl.unlink()
    os.link(home.private_dir / "ca.key", crl)  # same inode as the key, under a listed name
    _refused(mgr, h, crl, "hard links")
    # Once the link is gone and the file published again, the same name streams.
    crl.unlink()
    crl.write_bytes(b"crl2")
    assert mgr.open_file(h, str(crl)) == 4 and mgr.read(h, 100) == b"crl2"
    mgr.close_file(h)
    mgr.end(h)


def test_listed_file_through_a_symlinked_directory_is_refused(mgr: BackupManager, home: Home,
                                                              tmp_path: Path) -> None:
    h, crl = _listed(mgr, home)
    # publish/ swapped for a symlink to a directory whose ca.crl is a plain copy of the key: O_NOFOLLOW
    # checks only the last component, and the file has one link; the path check must catch it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(home.private_dir / "ca.key", elsewhere / "ca.crl")
    shutil.rmtree(home.publish_dir)
    home.publish_dir.symlink_to(elsewhere, target_is_directory=True)
    _refused(mgr, h, crl, "not the listed file")
    mgr.end(h)
