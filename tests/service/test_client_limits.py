"""Issue #10 finding 6: slow and broken clients, and the audit log's rotation.

- Slowloris: half-sent request bodies are answered 408 (ERROR_TIMEOUT) and closed by the server after
  ``service.body_timeout``; the service keeps serving meanwhile.
- A client that disconnects mid-request costs one INFO line in the service log, no traceback.
- ``audit.log`` renamed by logrotate + SIGHUP: the next record lands in a new ``audit.log``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.service import audit
from support import Service, make_home

BODY_TIMEOUT = 1.0
CONNECTIONS = 50
WAIT = 60.0  # bound on waiting for the server (never asserted as a duration)


@pytest.fixture
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = make_home(tmp_path_factory.mktemp("lim") / "H", "Limits Test CA", body_timeout=BODY_TIMEOUT)
    s = Service(home).start()
    yield s
    s.ensure_stopped()


def _half_sent(path: Path) -> socket.socket:
    """A connection that sends headers announcing a 1000-byte body, then only part of it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(str(path))
    s.sendall(b"POST /control HTTP/1.1\r\nHost: certsrv\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"flags\": ")
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a recv timeout fails the test)."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def test_half_sent_bodies_are_closed_after_the_body_timeout(svc: Service) -> None:
    conns = [_half_sent(svc.socket) for _ in range(CONNECTIONS)]
    try:
        # Meanwhile the service serves others.
        with svc.client() as c:
            assert c.is_server_online() is True
        answers = [_read_until_closed(s) for s in conns]
    finally:
        for s in conns:
            s.close()
    for a in answers:
        # The server answered 408 with the HRESULT, then closed (recv returned EOF, not a timeout).
        head, _, body = a.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), a[:200]
        err = json.loads(body)
        assert err["hresult_hex"] == "0x800705B4" and err["name"] == "ERROR_TIMEOUT"
        assert "service.body_timeout" in err["message"]
    log = svc.log()
    assert log.count("request body not received within 1s (service.body_timeout); connection closed") == CONNECTIONS
    assert "Traceback" not in log
    # ServerControl never ran for any of them: still online.
    with svc.client() as c:
        assert c.is_server_online() is True


def test_a_client_disconnecting_mid_request_logs_one_info_line(svc: Service) -> None:
    s = _half_sent(svc.socket)
    s.close()  # gone before the body is complete
    deadline = time.monotonic() + WAIT
    while "client disconnected during POST /control" not in svc.log():
        assert time.monotonic() < deadline, svc.log()
        time.sleep(0.05)
    with svc.client() as c:
        assert c.is_server_online() is True
    log = svc.log()
    lines = [ln for ln in log.splitlines() if "client disconnected" in ln]
    assert len(lines) == 1 and " INFO " in lines[0], lines
    assert "Traceback" not in log and " ERROR " not in log, log


def test_audit_log_reopened_on_sighup(svc: Service) -> None:
    path = svc.home.root / "audit.log"
    with svc.client() as c:
        c.server_control(2)  # an audited no-op
    first = audit.read(path)
    assert first and first[-1]["operation"] == "server_control"
    rotated = path.with_name("audit.log.1")
    os.rename(path, rotated)  # what logrotate does
    assert svc.proc is not None
    os.kill(svc.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while "SIGHUP: audit log reopened" not in svc.log():
        assert time.monotonic() < deadline, svc.log()
        time.sleep(0.05)
    with svc.client() as c:
        c.server_control(3)
        assert c.is_server_online() is True  # SIGHUP did not stop the service
    new = audit.read(path)
    assert [r["operation"] for r in new] == ["server_control"] and new[0]["time"] > first[-1]["time"]
    assert audit.read(rotated) == first  # the old file holds the old records, and nothing more
    assert oct(path.stat().st_mode & 0o777) == "0o600"
