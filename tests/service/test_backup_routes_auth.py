"""Backup endpoints over TLS: only Operator gets through (spec §1.6), sessions bind to their caller,
and names outside the session's lists are refused over HTTP too."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pycertsrv.client import Client
from pycertsrv.client.backup import BackupSession
from pycertsrv.config import Config, RoleGrant
from pycertsrv.errors import (
    E_ACCESSDENIED,
    E_UNEXPECTED,
    ERROR_FILE_NOT_FOUND,
    JET_ERR_BACKUP_IN_PROGRESS,
    CertSrvError,
)
from support import Service, live_service, short_home

ROLE_SETS: dict[str, list[str]] = {
    "operator": ["Operator"],
    "operator2": ["Operator"],
    "admin_operator": ["Administrator", "Operator"],
    "admin": ["Administrator"],
    "officer": ["Officer"],
    "auditor": ["Auditor"],
    "enrollee": ["Enrollee"],
    "nobody": [],
}
REFUSED = ["admin", "officer", "auditor", "enrollee", "nobody"]


class TLSWorld:
    def __init__(self, svc: Service, files: dict[str, tuple[Path, Path]], ca_file: Path) -> None:
        self.svc = svc
        self.files = files
        self.ca_file = ca_file

    def client(self, who: str) -> Client:
        cert, key = self.files[who]
        assert self.svc.tls_address is not None
        return Client(self.svc.tls_address, cert=cert, key=key, cafile=self.ca_file)


@pytest.fixture(scope="module")
def world() -> Iterator[TLSWorld]:
    home = short_home("cbauth")
    home.parent.mkdir(parents=True, exist_ok=True)
    tls = home.parent / "tls"
    tls.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(tls / "server.pem"))
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    files: dict[str, tuple[Path, Path]] = {}
    grants: list[RoleGrant] = []
    for who, roles in ROLE_SETS.items():
        leaf = ca.issue_cert(f"{who}@clients.test", common_name=who)
        cert, key = tls / f"{who}.crt", tls / f"{who}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        files[who] = (cert, key)
        der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        if roles:
            grants.append(RoleGrant(principal=f"cert-sha256:{hashlib.sha256(der).hexdigest()}",
                                    roles=roles))  # type: ignore[arg-type]

    def configure(cfg: Config) -> None:
        cfg.service.tls_cert = str(tls / "server.pem")
        cfg.service.tls_key = str(tls / "server.pem")
        cfg.service.client_ca = str(tls / "ca.pem")
        cfg.roles = grants

    svc = live_service(home, configure=configure, tcp=True)
    yield TLSWorld(svc, files, tls / "ca.pem")
    svc.cleanup()


def _calls(s: BackupSession, names: dict[str, str]) -> dict[str, Any]:
    """Every backup endpoint, as the given session (handle) would call it."""
    return {
        "database_names": lambda: s.database_names(),
        "logs": lambda: s.backup_logs(),
        "dynamic_files": lambda: s.dynamic_files(),
        "locations": lambda: s.database_locations(),
        "open": lambda: s.open_file(names["db"]),
        "read": lambda: s.read(4096),
        "close": lambda: s.close_file(),
        "truncate": lambda: s.truncate_logs(),
        "end": lambda: s.end(),
        "status": lambda: s.client.call("GET", "/backup/status"),
    }


@pytest.mark.parametrize("who", REFUSED)
def test_every_backup_endpoint_refuses_non_operators(world: TLSWorld, who: str) -> None:
    with world.client("operator") as op, world.client(who) as other:
        with pytest.raises(CertSrvError) as e:
            BackupSession.prepare(other, "full")
        assert e.value.hresult == E_ACCESSDENIED and "Operator" in e.value.message
        with op.backup("full") as s:
            db = s.database_names()[0][1:]
            s.open_file(db)
            # the same handle, presented by a caller without Operator
            stolen = BackupSession(other, {"handle": s.handle, "kind": s.kind})
            for name, call in _calls(stolen, {"db": db}).items():
                with pytest.raises(CertSrvError) as e:
                    call()
                assert e.value.hresult == E_ACCESSDENIED, name
            # the operator's session is untouched: the file is still open at offset 0
            first = s.read(16)
            assert len(first) == 16 and first.startswith(b"SQLite format 3")
            s.close_file()
        assert op.call("GET", "/backup/status")["session"] is None


@pytest.mark.parametrize("who", ["operator", "admin_operator"])
def test_operators_can_run_a_backup(world: TLSWorld, who: str) -> None:
    with world.client(who) as c:
        with c.backup("full") as s:
            assert s.ca_name == "Live Test CA"  # live_service's default name
            for lister in (s.database_names, s.backup_logs):  # database files before the log list
                for e in lister():
                    s.open_file(e[1:])
                    while s.read(65536):
                        pass
                    s.close_file()
            assert s.truncate_logs() is not None
            result = s.end()
        assert result["recorded"] is True
        assert c.call("GET", "/backup/status")["session"] is None


def test_session_belongs_to_its_caller(world: TLSWorld) -> None:
    with world.client("operator") as a, world.client("operator2") as b:
        with a.backup("full") as s:
            with pytest.raises(CertSrvError) as e:
                b.backup("full")
            assert e.value.hresult == JET_ERR_BACKUP_IN_PROGRESS
            with pytest.raises(CertSrvError) as e:
                a.backup("full")
            assert e.value.hresult == E_UNEXPECTED
            other = BackupSession(b, {"handle": s.handle, "kind": s.kind})
            for name, call in _calls(other, {"db": "/x"}).items():
                if name == "status":
                    continue
                with pytest.raises(CertSrvError) as e:
                    call()
                assert e.value.hresult == E_UNEXPECTED, name
            assert s.database_names()  # still usable by its owner
        st = a.call("GET", "/backup/status")
        assert st["session"] is None


def test_path_tricks_over_http(world: TLSWorld) -> None:
    home = world.svc.home
    with world.client("operator") as c, c.backup("full") as s:
        db = s.database_names()[0][1:]
        logs = [e[1:] for e in s.backup_logs()]
        dyn = s.dynamic_files()
        assert dyn and all(os.path.isabs(p) for p in dyn)
        for name in ["/etc/passwd", str(home.config), str(home.root / "private" / "ca.key"), db,
                     logs[0].replace("/logs/", "/logs/../logs/"), "../" * 8 + "etc/passwd", "!" + logs[0],
                     Path(logs[0]).name]:
            with pytest.raises(CertSrvError) as e:
                s.open_file(name)
            # db: listed but no longer openable after the log list (sequence error); the rest: not listed
            expect = E_UNEXPECTED if name == db else ERROR_FILE_NOT_FOUND
            assert e.value.hresult == expect, name
            with pytest.raises(CertSrvError) as e:
                s.read(10)
            assert e.value.hresult == E_UNEXPECTED  # nothing was opened
        assert s.open_file(dyn[0]) == Path(dyn[0]).stat().st_size
        assert s.read(1 << 20) == Path(dyn[0]).read_bytes()
        s.close_file()
