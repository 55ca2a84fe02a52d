"""The endpoints of a :class:`~pycertsrv.client.Client`: one or several service addresses, each with its own
connection pool (issue 14: several nodes, one CA).

``server`` lists one or more endpoints separated by commas (DESIGN "--server"): ``unix:PATH``, ``HOST:PORT``
(TLS), ``HOST\\CA Name`` (a config string, spec §2.18), or None for the local home's socket. A comma inside a
config string's CA name stays in the name when what follows it cannot be an endpoint (``a\\Example, Inc CA``).

What a failed call tells the client about the write it carried (:func:`sent_before_failure`): a connection
that was refused or could not be made carried nothing (the write did not happen: try another node); one that
broke after the request went out may have carried it (the outcome is unknown).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx

from ..errors import E_INVALIDARG, CertSrvError, InvalidArgument
from ..home import Home

DEFAULT_TLS_PORT = 8443
# A piece of a comma-separated list that may start an endpoint: unix:..., or HOST[:PORT] with no blank in it.
_ENDPOINT_START = re.compile(r"^(unix:.*|\[[0-9A-Fa-f:.]+\](:\d+)?|[^\s\\,\[\]]+)(\\.*)?$", re.S)


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (then a config string means the local home's socket)."""
    h = host.strip().lower().rstrip(".")
    if h in ("", ".", "localhost", "127.0.0.1", "::1", "[::1]"):
        return True
    name = socket.gethostname().lower()
    return h in (name, name.split(".")[0])


def local_socket(home: Path | str | Home | None = None) -> Path:
    """The Unix socket of the local home's service (``service.socket`` of its certsrv.toml)."""
    from .. import config as config_mod

    hm = home if isinstance(home, Home) else Home.at(home)
    try:
        sock = Path(config_mod.load(hm.root).service.socket)
    except CertSrvError:
        return hm.socket
    return sock if sock.is_absolute() else hm.root / sock


def split_servers(server: str | None) -> list[str | None]:
    """The endpoint strings of ``server`` (``[None]``: the local home's socket); InvalidArgument when empty."""
    if server is None:
        return [None]
    out: list[str] = []
    for piece in server.split(","):
        if out and "\\" in out[-1] and not out[-1].startswith("unix:") and not _ENDPOINT_START.match(piece.strip()):
            out[-1] += "," + piece  # a comma of the CA name in a config string
            continue
        out.append(piece)
    items = [p.strip() for p in out]
    if not items or any(not p for p in items):
        raise InvalidArgument(E_INVALIDARG, server, "server must list endpoints separated by commas: "
                              "unix:PATH, HOST:PORT or HOST\\CA Name, e.g. unix:/run/a.sock,ca2:8443")
    return list(dict.fromkeys(items))  # a repeated endpoint is one endpoint


def split_host_port(server: str, text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port or None)."""
    if text.startswith("["):  # [IPv6]:PORT
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise InvalidArgument(E_INVALIDARG, server, "server must be unix:PATH, HOST:PORT or HOST\\CA Name")
    return host, int(port) if port else None


class Endpoint:
    """One service address and its connection pool.

    :param spec: the endpoint as given (None: the local home's socket).
    :param home: the local home (for the default socket and a local config string).
    :param tls: makes the TLS context (called once, for the first TLS endpoint).
    :param timeout: seconds per request.
    """

    def __init__(self, spec: str | None, home: Path | str | Home | None, tls: Callable[[], ssl.SSLContext],
                 timeout: float) -> None:
        self.spec = spec
        self.expected_name: str | None = None
        self.name_checked = False
        target: str | None = None  # None: local socket; "unix:PATH"; "HOST:PORT" (TLS)
        if spec is not None and spec.startswith("unix:"):
            target = spec
        elif spec is not None:
            hostpart, sep, name = spec.partition("\\")
            if sep:
                self.expected_name = name.strip() or None
            host, port = split_host_port(spec, hostpart.strip())
            target = None if port is None and is_local_host(host) else f"{host}:{port or DEFAULT_TLS_PORT}"
        tm = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        if target is None or target.startswith("unix:"):
            path = Path(target[5:]) if target else local_socket(home)
            self.address = f"unix:{path}"
            self.socket_path: Path | None = path
            self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://certsrv",
                                     trust_env=False, timeout=tm)
        else:
            host, _, port_text = target.rpartition(":")
            netloc = f"[{host}]" if ":" in host else host
            self.address = f"{netloc}:{port_text}"
            self.socket_path = None
            # Idle connections are kept (httpx's default drops them after 5 s): a backup session is held by
            # its connection, and a pause between two calls must not end it.
            self.http = httpx.Client(verify=tls(), base_url=f"https://{netloc}:{port_text}", timeout=tm,
                                     trust_env=False,
                                     limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                                         keepalive_expiry=None))

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


# Transport errors raised before the request could leave: nothing was sent, so nothing was done.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def sent_before_failure(e: httpx.TransportError) -> bool:
    """Whether the request may have reached the service before ``e`` (a read or a broken connection after the
    request was written): then a write's outcome is unknown. A refused or failed connection sent nothing."""
    return not isinstance(e, _NOT_SENT)


__all__ = ["DEFAULT_TLS_PORT", "Endpoint", "is_local_host", "local_socket", "sent_before_failure", "split_host_port",
           "split_servers"]
