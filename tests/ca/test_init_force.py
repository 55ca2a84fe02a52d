"""Issue 9, finding 6: ``certsrv init --force`` on a stopped CA that issued certificates is refused unless the
operator names the CA; even then the old home is moved aside (``HOME/.replaced-<time>/``), never deleted."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv import config
from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.ca.replace import REPLACED_PREFIX, ConfirmationRequired
from support import certsrv

OLD = "Old Root CA"


def _old_ca(home: Path, ca_key: Callable[[str], Any], issued: int = 2) -> tuple[bytes, Any]:
    """A stopped CA that issued ``issued`` certificates (one then revoked): its key bytes and database state."""
    with Authority.init(home, OLD, key=ca_key("ec-p256")) as a:
        serials = [a.submit(_csr(ca_key("ec-p384"), f"h{i}.example.com")).serial for i in range(issued)]
        if serials:
            a.revoke(str(serials[0]), "keyCompromise")
        a.publish_crl()
    return (home / "private" / "ca.key").read_bytes(), _state(home)


def _csr(key: Any, cn: str) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


def _state(home: Path) -> Any:
    """Every row of every table and the applied LSN, re-read from the home's database."""
    from pycertsrv.store import TABLES

    with Authority.open(home) as a:
        return a.store.applied_lsn, {n: a.store.select(n, order_by=list(t.key)) for n, t in TABLES.items()}


def _asides(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if p.name.startswith(REPLACED_PREFIX))


def test_cli_refuses_without_confirmation_then_moves_the_old_ca_aside(tmp_path: Path,
                                                                     ca_key: Callable[[str], Any]) -> None:
    home = tmp_path / "ca"
    key, state = _old_ca(home, ca_key)
    toml = (home / "certsrv.toml").read_bytes()
    for extra, why in (([], "no terminal to ask on"), (["--confirm-name", "Old Root"], "a wrong name")):
        out = certsrv("init", "--home", str(home), "--name", "New CA", "--force", *extra)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, (why, out.stderr)
        assert "0x80070050 ERROR_FILE_EXISTS" in lines[0] and f"CA '{OLD}' with 2 issued certificate(s)" in lines[0]
        assert f"--confirm-name '{OLD}'" in lines[0] and "moved aside, not deleted" in lines[0]
        # Nothing changed: the key, the configuration, and the database as re-read from disk.
        assert (home / "private" / "ca.key").read_bytes() == key
        assert (home / "certsrv.toml").read_bytes() == toml
        assert _state(home) == state
        assert _asides(home) == []
    out = certsrv("init", "--home", str(home), "--name", "New CA", "--force", "--confirm-name", OLD)
    assert out.returncode == 0, out.stderr
    [aside] = _asides(home)
    assert f"moved to {aside} (nothing was deleted)" in out.stdout
    assert aside.stat().st_mode & 0o777 == 0o700
    # The old CA is whole where the output says: its key, and its database (opened as a home of its own).
    assert (aside / "private" / "ca.key").read_bytes() == key
    assert (aside / "certsrv.toml").read_bytes() == toml
    assert _state(aside) == state
    # The new CA is a different one, with an empty database.
    assert config.load(home).ca.name == "New CA"
    assert (home / "private" / "ca.key").read_bytes() != key
    with Authority.open(home) as a:
        assert a.store.count("request") == 0


def test_cli_prompts_for_the_name_on_a_terminal(tmp_path: Path, ca_key: Callable[[str], Any]) -> None:
    home = tmp_path / "ca"
    key, state = _old_ca(home, ca_key, issued=1)
    for typed, code in (("not it", 1), (OLD, 0)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "pycertsrv.cli", "init", "--home", str(home), "--name",
                                     "New CA", "--force"], stdin=slave, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            os.close(slave)
            os.write(master, typed.encode() + b"\n")
            _stdout, stderr = proc.communicate(timeout=120)
        finally:
            os.close(master)
        assert proc.returncode == code, stderr
        assert f"Type the name of the CA to replace ({OLD})" in stderr
        if code:
            assert "the name given ('not it') is not the CA's" in stderr and "Traceback" not in stderr
            assert _state(home) == state and _asides(home) == []
    [aside] = _asides(home)
    assert (aside / "private" / "ca.key").read_bytes() == key and _state(aside) == state


def test_library_confirmation_and_homes_without_certificates(tmp_path: Path, ca_key: Callable[[str], Any],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "ca"
    key, state = _old_ca(home, ca_key, issued=1)
    with pytest.raises(ConfirmationRequired) as ei:
        Authority.init(home, "New", force=True, key=ca_key("ec-p384"), key_type="ec-p384")
    assert ei.value.hresult == E.ERROR_FILE_EXISTS and ei.value.ca_name == OLD
    assert _state(home) == state and (home / "private" / "ca.key").read_bytes() == key
    # A CA that issued nothing needs no name, but is still moved aside, not deleted.
    empty = tmp_path / "empty"
    Authority.init(empty, "Empty CA", key=ca_key("ec-p256")).close()
    empty_key = (empty / "private" / "ca.key").read_bytes()
    time.sleep(0.001)  # distinct aside names (microsecond stamps) are not under test here
    with Authority.init(empty, "Second", force=True, key=ca_key("ec-p384"), key_type="ec-p384") as a:
        assert a.replaced is not None and a.replaced.parent == empty.resolve()
        assert (a.replaced / "private" / "ca.key").read_bytes() == empty_key
    with caplog.at_level(logging.WARNING, "pycertsrv.home"):
        Authority.open(empty).close()
    assert caplog.records == []  # the new home and the aside were made private: nothing to tighten
    # A database that cannot be read counts as holding certificates: the name is required.
    db = next((home / "db").glob("*.db"))
    saved = db.read_bytes()
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfirmationRequired) as ei:
        Authority.init(home, "New", force=True, key=ca_key("ec-p384"), key_type="ec-p384")
    assert "cannot be read" in ei.value.message
    db.write_bytes(saved)
