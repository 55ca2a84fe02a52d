"""systemd's notify protocol, spoken to a real AF_UNIX datagram socket that the test binds and hands to a real
``certsrv serve`` as ``$NOTIFY_SOCKET`` (what systemd does for ``Type=notify``)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.client import Client
from pycertsrv.service import sdnotify
from support import Service, make_home


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    yield s, str(path)
    s.close()


def receive(s: socket.socket, until: str, timeout: float = 60.0) -> list[dict[str, str]]:
    """Datagrams (parsed ``KEY=VALUE`` lines) up to and including the first one with ``until`` set."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = s.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {until} within {timeout}s; got {got}") from None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        got.append(msg)
        if until in msg:
            return got


def test_ready_watchdog_and_stopping_from_a_real_service(tmp_path: Path,
                                                         notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    home = make_home(tmp_path / "H")
    # WATCHDOG_USEC 0.4 s: pings every 0.2 s (half, as sd_watchdog_enabled(3) recommends)
    svc = Service(home, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    svc.start(wait=False)
    try:
        first = receive(sock, "READY")
        ready = first[-1]
        assert ready["READY"] == "1"
        assert svc.proc is not None and ready["MAINPID"] == str(svc.proc.pid)
        assert "serving CA" in ready["STATUS"] and str(svc.socket) in ready["STATUS"]
        # READY means serving: the socket answers right away, no polling needed
        with Client(f"unix:{svc.socket}", timeout=10) as c:
            assert c.is_server_online() is True
        # watchdog pings keep coming from the running service
        pings = 0
        while pings < 3:
            pings += sum(1 for m in receive(sock, "WATCHDOG") if m.get("WATCHDOG") == "1")
        assert svc.stop() == 0
        tail = receive(sock, "STOPPING")
        assert tail[-1]["STOPPING"] == "1" and "signal SIGTERM" in tail[-1]["STATUS"]
    finally:
        svc.ensure_stopped()


def test_watchdog_only_for_this_pid_and_abstract_sockets(tmp_path: Path) -> None:
    # sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be ours; 0 or garbage means no watchdog
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert sdnotify.watchdog_interval({}) is None
    # without NOTIFY_SOCKET nothing is sent (not under systemd)
    assert sdnotify.notify("READY=1", {}) is False
    # "@name" is the abstract namespace (leading NUL), as systemd may pass it
    name = f"pycertsrv-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": "@" + name}) is True
        s.settimeout(10)
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    finally:
        s.close()
    # a socket nobody listens on: logged, not fatal
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
