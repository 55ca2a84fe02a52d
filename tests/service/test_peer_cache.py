"""A Unix caller's SO_PEERCRED is read once per connection (issue 15), and a closed connection's entry goes."""

from __future__ import annotations

import os
import socket
from typing import Any

from pycertsrv.service import auth
from pycertsrv.service.auth import RoleMap


class _Transport:
    """The two things RoleMap.peer asks of an aiohttp transport, over a real Unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class _Connection:
    """Stands for aiohttp's protocol object: ``transport`` is None once the connection is lost."""

    def __init__(self, transport: _Transport | None) -> None:
        self.transport = transport


def test_peer_is_read_once_per_connection_and_closed_ones_are_dropped(monkeypatch: Any) -> None:
    roles = RoleMap([], owner_uid=os.getuid())
    a, b = socket.socketpair()
    with a, b:
        t = _Transport(a)
        conn = _Connection(t)
        first = auth.identify(t, roles, conn)
        assert first.kind == "unix" and first.uid == os.getuid() and "Administrator" in first.roles
        a.close()  # a second SO_PEERCRED read would fail now (and give nobody): the connection's entry answers
        assert auth.identify(t, roles, conn) is first
        assert auth.identify(t, roles, None).kind == "none"  # no connection to remember it by: read again
    monkeypatch.setattr(auth, "PEERS_PURGE", 4)
    roles = RoleMap([], owner_uid=os.getuid())
    pairs = [socket.socketpair() for _ in range(6)]
    try:
        conns = [_Connection(_Transport(x)) for x, _ in pairs]
        for c in conns[:4]:
            roles.peer(c, c.transport)
        for c in conns[:3]:
            c.transport = None  # lost
        roles.peer(conns[4], conns[4].transport)  # the fifth entry: the three closed ones are dropped
        assert set(roles._peers) == {conns[3], conns[4]}
    finally:
        for x, y in pairs:
            x.close()
            y.close()
