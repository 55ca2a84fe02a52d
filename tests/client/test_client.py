"""The client: server strings, the CA-name check, Unavailable when nothing answers, the same error class and
HRESULT as the library, the CA backend of the CLI (service or direct), IsServerOnline's three answers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority, CRLInfo, RequestInfo
from pycertsrv.cli.backend import RemoteAuthority, ca_backend, service_running
from pycertsrv.client import Client
from pycertsrv.errors import E_INVALIDARG, RPC_S_SERVER_UNAVAILABLE, CertSrvError, InvalidArgument, Unavailable
from pycertsrv.home import Home
from pycertsrv.service import run_app
from support import Service, make_csr, make_home

NAME = "Client Test CA"
# The service's app keys are strings by contract (app["authority"], app["backup"]).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = make_home(tmp_path_factory.mktemp("cl") / "H", NAME, pending=True)
    svc = Service(home).start()
    yield svc
    svc.ensure_stopped()


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    """A second CA, opened in-process (no service), to compare errors with."""
    home = make_home(tmp_path_factory.mktemp("direct") / "H", NAME, pending=True)
    a = Authority.open(home.root)
    yield a
    a.close()


def test_server_string_forms(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", NAME)
    with Client("unix:/run/x/certsrv.sock") as c:
        assert c.address == "unix:/run/x/certsrv.sock" and c.socket_path == Path("/run/x/certsrv.sock")
    with Client("127.0.0.1:9443") as c:
        assert c.address == "127.0.0.1:9443" and c.socket_path is None
    with Client("[::1]:9443") as c:
        assert c.address == "[::1]:9443"
    with Client("ca.example.org\\Some CA") as c:
        assert c.address == "ca.example.org:8443" and c.expected_name == "Some CA"
    with Client("ca.example.org:7000\\Some CA") as c:
        assert c.address == "ca.example.org:7000"
    for local in ("localhost", socket.gethostname(), "127.0.0.1"):
        with Client(f"{local}\\{NAME}", home=home.root) as c:
            assert c.address == f"unix:{home.root / 'certsrv.sock'}", local
    with Client(home=home.root) as c:
        assert c.address == f"unix:{home.root / 'certsrv.sock'}"
    cfg = config_mod.load(home.root)
    config_mod.save(home.root, cfg.model_copy(update={"service": cfg.service.model_copy(update={"socket": "x.sock"})}))
    with Client(home=home.root) as c:
        assert c.address == f"unix:{home.root / 'x.sock'}"
    for bad in ("host:notaport", "host:70000", ":8443"):
        with pytest.raises(InvalidArgument) as ei:
            Client(bad)
        assert ei.value.hresult == E_INVALIDARG


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_nothing_answers_is_rpc_server_unavailable(tmp_path: Path, where: str) -> None:
    server = f"unix:{tmp_path / 'none.sock'}" if where == "unix" else f"127.0.0.1:{_closed_port()}"
    with Client(server) as c:
        calls: list[Callable[[], Any]] = [c.is_server_online, c.status, lambda: c.submit(make_csr()),
                                          lambda: c.issue(1), c.publish_crl, lambda: c.server_control(1)]
        for call in calls:
            with pytest.raises(Unavailable) as ei:
                call()
            assert ei.value.hresult == RPC_S_SERVER_UNAVAILABLE == 0x800706BA
            assert "does not answer" in ei.value.message


def test_config_string_checks_the_ca_name(served: Service) -> None:
    with Client(f"localhost\\{NAME.upper()}", home=served.home.root) as c:
        assert c.is_server_online() is True  # CA names compare case-insensitively, as AD CS's
        assert c.status()["name"] == NAME
    with Client("localhost\\Some Other CA", home=served.home.root) as c:
        with pytest.raises(InvalidArgument) as ei:
            c.view()
        assert ei.value.hresult == E_INVALIDARG
        assert "serves CA 'Client Test CA', not 'Some Other CA'" in ei.value.message
    r = subprocess.run([sys.executable, "-m", "pycertsrv.cli", "status", "--home", str(served.home.root),
                        "--server", "localhost\\Nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "0x80070057 E_INVALIDARG" in r.stderr


def _outcome(call: Callable[[], Any]) -> tuple[str, int] | str:
    try:
        call()
    except CertSrvError as e:
        return type(e).__name__, e.hresult
    return "ok"


def test_service_errors_come_back_as_the_librarys(served: Service, direct: Authority) -> None:
    with served.client() as c:
        remote = RemoteAuthority(c)
        for a in (direct, remote):  # the same history on both CAs
            rid = a.submit(make_csr("e.example.com")).request_id
            a.issue(rid)
        cases: dict[str, Callable[[Any], Any]] = {
            "issue unknown": lambda a: a.issue(10**6),
            "issue twice": lambda a: a.issue(1),
            "deny issued": lambda a: a.deny(1),
            "revoke unknown": lambda a: a.revoke("ABCDEF"),
            "revoke bad reason": lambda a: a.revoke("ABCDEF", "bogus"),
            "revoke removeFromCRL": lambda a: a.revoke(a.get_request(1).serial, "removeFromCRL"),
            "unrevoke not held": lambda a: a.unrevoke(a.get_request(1).serial),
            "garbage csr": lambda a: a.submit(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END "
                                              b"CERTIFICATE REQUEST-----\n"),
            "unknown template": lambda a: a.submit(make_csr(), template="nope"),
            "certificate of pending": lambda a: a.get_certificate(a.submit(make_csr()).request_id),
            "get unknown": lambda a: a.get_request(10**6),
        }
        for what, case in cases.items():
            want = _outcome(lambda case=case: case(direct))
            got = _outcome(lambda case=case: case(remote))
            assert want != "ok", what
            assert got == want, what


def test_cli_backend_uses_the_service_when_running(served: Service, tmp_path: Path) -> None:
    home = served.home.root
    assert service_running(home)
    with ca_backend(home, None) as a:
        assert isinstance(a, RemoteAuthority)
        info = a.submit(make_csr("cli.example.com"), attributes={"note": "through the service"})
        assert isinstance(info, RequestInfo) and info.disposition_name == "pending"
        issued = a.issue(info.request_id)
        assert isinstance(issued, RequestInfo) and issued.certificate_der is not None
        assert a.get_certificate(issued.serial) == issued.certificate_der
        assert [r.request_id for r in a.view(request_id=info.request_id)] == [info.request_id]
        assert len(a.view(limit=None)) == len(a.view(limit=1000))
        crl = a.publish_crl()
        assert isinstance(crl, CRLInfo) and crl.number >= 2 and crl.crl.last_update_utc is not None
        assert a.revoke(issued.serial, "superseded").revocation_reason_name == "superseded"
    # A home nobody serves: the backend is the Authority itself (it takes the lock, and releases it).
    other = make_home(tmp_path / "O", "Other CA")
    assert not service_running(other.root)
    with ca_backend(other.root, None) as a:
        assert isinstance(a, Authority)
        assert a.submit(make_csr()).disposition_name == "issued"
    with ca_backend(other.root, None) as a:
        assert isinstance(a, Authority)


def test_is_server_online_three_answers(tmp_path: Path) -> None:
    """In-process service (a thread): running -> True, suspended -> False, stopped -> Unavailable."""
    home = make_home(tmp_path / "H", NAME)
    a = Authority.open(home.root)
    sock = tmp_path / "s.sock"
    apps: list[Any] = []

    async def main() -> None:
        await run_app(a, socket_override=sock, on_ready=apps.append)

    t = threading.Thread(target=asyncio.run, args=(main(),))
    t.start()
    try:
        with Client(f"unix:{sock}") as c:
            for _ in range(600):
                try:
                    if c.is_server_online():
                        break
                except Unavailable:
                    pass
                threading.Event().wait(0.05)
            assert c.is_server_online() is True
            state = apps[0]["state"]
            state.state = "suspended"
            assert c.is_server_online() is False
            assert c.status()["state"] == "suspended"
            state.state = "running"
            c.shutdown(wait=30)
            with pytest.raises(Unavailable):
                c.is_server_online()
    finally:
        if apps:
            apps[0]["state"].request_stop("test teardown")
        t.join(60)
        a.close()
    assert not sock.exists()
    assert Home.at(home.root).root == home.root
