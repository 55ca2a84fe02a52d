"""Issue 9 finding 5 (second bullet): ``certsrv backup $HOME/publish --force`` wrote the PKCS#12 and the whole
database into the directory meant for web publication. A set directory inside the CA home is now refused,
``--force`` or not, symlinks resolved, and the check is in the writer (the home learnt from the session)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.backupset.writer import run_backup
from pycertsrv.client import Client
from pycertsrv.errors import E_ACCESSDENIED, AccessDenied
from support import Service, certsrv, live_service, short_home


@pytest.fixture(scope="module")
def live() -> Iterator[Service]:
    svc = live_service(short_home("cbhome"), name="Home Test CA")
    yield svc
    svc.cleanup()


def listing(d: Path) -> dict[str, str]:
    """Every entry under ``d`` with a digest of its content (directories as 'dir')."""
    out: dict[str, str] = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_backup_into_publish_with_force_is_refused(live: Service, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    home = live.home.root
    publish = home / "publish"
    before = listing(publish)
    assert before  # the CA publishes its certificate there
    r = certsrv("backup", str(publish), "--force", "--password-file", str(pw), "--quiet", "--home", str(home))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(publish) in lines[0] and "0x80070005 E_ACCESSDENIED" in lines[0]
    assert "outside the home" in lines[0]
    assert listing(publish) == before  # re-listed: nothing written, nothing removed
    assert not any(p.suffix == ".p12" for p in home.rglob("*.p12"))


def test_symlinked_and_nested_targets_inside_the_home_are_refused(live: Service, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    home = live.home.root
    link = tmp_path / "innocent"
    os.symlink(home / "private", link)
    before = listing(home / "private")
    for target in (link / "set", home / "new-dir" / "set", home):
        r = certsrv("backup", str(target), "--force", "--password-file", str(pw), "--quiet", "--database-only",
                    "--home", str(home))
        assert r.returncode == 1 and "E_ACCESSDENIED" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
            r.stderr
    assert listing(home / "private") == before
    assert not (home / "new-dir").exists()


def test_the_writer_refuses_from_the_sessions_locations_alone(live: Service) -> None:
    """No --home given to the writer (a database-only backup): the home comes from RestoreGetDatabaseLocations."""
    publish = live.home.root / "publish"
    before = listing(publish)
    with Client(live.address) as c, pytest.raises(AccessDenied) as ei:
        run_backup(c, publish / "sub", database_only=True, force=True, password=b"pw", home=None)
    assert ei.value.hresult == E_ACCESSDENIED
    assert listing(publish) == before
    with Client(live.address) as c:
        assert c.call("GET", "/backup/status")["session"] is None  # the session was ended
