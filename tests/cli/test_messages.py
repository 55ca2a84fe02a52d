"""Issue 10 finding 7: refusals that misled or said nothing of what to do, reworded — each checked on the
real command or the real service.

- ``backup`` against a stopped service says to start ``certsrv serve`` and leaves no directory behind;
- ``verify-backup`` names every problem's HRESULT symbolically;
- an empty CSR through the service gets the direct path's one line, not a pydantic sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.errors import E_INVALIDARG, RPC_S_SERVER_UNAVAILABLE, InvalidArgument
from pycertsrv.home import Home
from support import ONE_LINE, Service, certsrv, make_csr


def _line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_backup_against_a_stopped_service(tmp_path: Path) -> None:
    home = tmp_path / "ca"
    Authority.init(home, "Stopped CA").close()
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    dest = tmp_path / "sets" / "monday"  # neither it nor its parent exists yet
    r = certsrv("backup", str(dest), "--home", str(home), "--password-file", str(pw))
    assert r.returncode == 1
    line = _line(r.stderr)
    assert ONE_LINE.match(line), line
    assert f"0x{RPC_S_SERVER_UNAVAILABLE:08X} RPC_S_SERVER_UNAVAILABLE:" in line
    assert f"start it (certsrv serve --home {home})" in line
    assert not (tmp_path / "sets").exists()  # no empty target directory left behind
    # A named service that does not answer: the writer opens the session before it creates anything.
    r = certsrv("backup", str(dest), "--home", str(home), "--password-file", str(pw), "--quiet",
                "--server", f"unix:{tmp_path / 'nothing.sock'}")
    assert r.returncode == 1 and "RPC_S_SERVER_UNAVAILABLE" in _line(r.stderr)
    assert not (tmp_path / "sets").exists()
    # The key alone needs no service: that backup works, so the advice is true.
    r = certsrv("backup", str(dest), "--home", str(home), "--password-file", str(pw), "--key-only")
    assert r.returncode == 0, r.stderr
    assert (dest / "Stopped CA.p12").is_file()


@pytest.fixture
def service(tmp_path: Path) -> Service:
    Authority.init(tmp_path / "ca", "Messages CA").close()
    return Service(Home.at(tmp_path / "ca"))


def test_verify_backup_names_every_hresult(service: Service, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    svc = service.start()
    try:
        r = certsrv("backup", str(tmp_path / "set"), "--home", str(svc.home.root), "--password-file", str(pw),
                    "--quiet", "--keep-log")
        assert r.returncode == 0, r.stderr
    finally:
        svc.ensure_stopped()
    db = tmp_path / "set" / "DataBase"
    log = sorted(db.glob("edb*.log"))[0]
    with open(log, "r+b") as f:  # one flipped byte in a log record, and a listed file gone
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    next(p for p in (tmp_path / "set").rglob("*") if p.is_file() and p.parent.name == "Dynamic").unlink()
    r = certsrv("verify-backup", str(tmp_path / "set"), "--password-file", str(pw))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) >= 2, r.stderr
    for line in lines:  # every problem: subject, HRESULT in hex, then its symbolic name
        assert re.match(r"^certsrv: (verify-backup: )?.+: 0x[0-9A-F]{8} [A-Za-z_]+: .+$", line), line
        assert "HRESULT_" not in line, line  # a known name, not the hex fallback


def test_empty_csr_reads_alike_directly_and_through_the_service(service: Service, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csr"
    empty.write_bytes(b"")
    direct = certsrv("submit", str(empty), "--home", str(service.home.root))
    svc = service.start()
    try:
        remote = certsrv("submit", str(empty), "--home", str(svc.home.root), "--server", f"unix:{svc.socket}")
        with Client(f"unix:{svc.socket}") as c:
            with pytest.raises(InvalidArgument) as ei:  # the raw API: our clause, not pydantic's sentence
                c.call("POST", "/ca/requests", json={"csr": 5})
            assert ei.value.hresult == E_INVALIDARG
            assert ei.value.message == "field 'csr' must be a string; see /openapi.json"
            with pytest.raises(InvalidArgument) as ei:
                c.call("POST", "/ca/requests", json={"csr": make_csr().decode(), "colour": "red"})
            assert ei.value.message == "field 'colour' is not a field of this request (remove it); see /openapi.json"
    finally:
        svc.ensure_stopped()
    assert direct.returncode == remote.returncode == 1
    line = _line(remote.stderr)
    assert line == _line(direct.stderr)
    assert line == "certsrv: submit: 0x8007000D ERROR_INVALID_DATA: request is empty"
