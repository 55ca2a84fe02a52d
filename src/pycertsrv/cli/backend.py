"""Where a CA verb runs: through the service when one serves the home (or ``--server`` is given), else
directly on the home (:class:`pycertsrv.ca.Authority`, which takes the home's lock).

``ca_backend(home, server, passphrase)`` returns a context manager yielding an *Authority-like* object:
the Authority itself, or :class:`RemoteAuthority`, which offers the same method names and return types
(:class:`RequestInfo`, :class:`CRLInfo`, DER bytes) over :class:`pycertsrv.client.Client`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import CertSrvError
from ..home import Home

F = TypeVar("F", bound=Callable[..., Any])


def server_options(f: F) -> F:
    """Add ``--server`` and the TLS client options; the command receives ``server: ServerSpec | None``."""

    @click.option("--server", default=None, envvar="CERTSRV_SERVER", metavar="SPEC",
                  help="Service to use: unix:PATH, HOST:PORT (TLS) or 'HOST\\CA Name'; several nodes of one CA "
                       "separated by commas (reads: the first that answers; writes: the writer) (env "
                       "CERTSRV_SERVER; default: the local home's service if it runs).")
    @click.option("--cert", "client_cert", default=None, envvar="CERTSRV_CLIENT_CERT",
                  type=click.Path(dir_okay=False, path_type=Path), help="TLS client certificate (PEM).")
    @click.option("--key", "client_key", default=None, envvar="CERTSRV_CLIENT_KEY",
                  type=click.Path(dir_okay=False, path_type=Path), help="TLS client key (PEM).")
    @click.option("--cafile", default=None, envvar="CERTSRV_CAFILE",
                  type=click.Path(dir_okay=False, path_type=Path), help="Trust anchor for the server's certificate.")
    @functools.wraps(f)
    def wrapper(*args: Any, server: str | None, client_cert: Path | None, client_key: Path | None,
                cafile: Path | None, **kwargs: Any) -> Any:
        kwargs["server"] = ServerSpec(server, client_cert, client_key, cafile)
        return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ServerSpec:
    """``--server`` and the TLS options, as given.

    :param server: the server string (None: the local home's service, if running).
    :param cert: TLS client certificate file.
    :param key: TLS client key file.
    :param cafile: trust anchor file.
    """

    def __init__(self, server: str | None = None, cert: Path | None = None, key: Path | None = None,
                 cafile: Path | None = None) -> None:
        self.server, self.cert, self.key, self.cafile = server, cert, key, cafile

    def client(self, home: Path | str | None) -> Any:
        """A :class:`pycertsrv.client.Client` for this spec."""
        from ..client import Client

        return Client(self.server, home=home, cert=self.cert, key=self.key, cafile=self.cafile)


def request_info_from_json(d: Mapping[str, Any]) -> Any:
    """Rebuild a :class:`pycertsrv.ca.RequestInfo` from its ``to_json()`` form."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from ..ca import RequestInfo

    pem = d.get("certificate_pem")
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER) if pem else None
    return RequestInfo(
        request_id=int(d["request_id"]), disposition=int(d["disposition"]), status_code=int(d.get("status_code") or 0),
        message=d.get("message") or "", requester=d.get("requester") or "", submitted_at=d.get("submitted_at") or "",
        resolved_at=d.get("resolved_at"), request_subject=d.get("request_subject"), template=d.get("template"),
        serial=d.get("serial"), subject=d.get("subject"), not_before=d.get("not_before"),
        not_after=d.get("not_after"), thumbprint=d.get("thumbprint"), revoked_at=d.get("revoked_at"),
        revocation_reason=d.get("revocation_reason"), invalidity_date=d.get("invalidity_date"),
        certificate_der=der,
    )


def crl_info_from_json(d: Mapping[str, Any]) -> Any:
    """Rebuild a :class:`pycertsrv.ca.CRLInfo` from its ``to_json()`` form (paths are the server's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from ..ca import CRLInfo

    pem = str(d.get("crl_pem") or "")
    der = x509.load_pem_x509_crl(pem.encode()).public_bytes(Encoding.DER) if pem else b""
    return CRLInfo(int(d["number"]), str(d["this_update"]), str(d["next_update"]), int(d["entries"]), der,
                   Path(d["der_path"]) if d.get("der_path") else None,
                   Path(d["pem_path"]) if d.get("pem_path") else None)


class RemoteAuthority:
    """The Authority's CA methods, through the service (same names, same return types).

    The requester of a submitted request is the caller as the service authenticated it; ``requester``
    and ``by`` arguments are therefore ignored.

    :param client: a connected :class:`pycertsrv.client.Client`.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def name(self) -> str:
        """The CA name."""
        return str(self.client.ca_info()["name"])

    def submit(self, csr: bytes, *, requester: str = "", template: str | None = None,
               attributes: Mapping[str, str] | None = None, request_key: str | None = None) -> Any:
        """Submit a CSR (with its request key: the client makes one when None)."""
        return request_info_from_json(self.client.submit(csr, template=template, attributes=attributes,
                                                          request_key=request_key))

    def issue(self, request_id: int, *, by: str | None = None) -> Any:
        """Issue a pending request."""
        return request_info_from_json(self.client.issue(request_id))

    def deny(self, request_id: int, *, by: str | None = None) -> Any:
        """Deny a pending request."""
        return request_info_from_json(self.client.deny(request_id))

    def resubmit(self, request_id: int, *, by: str | None = None) -> Any:
        """Resubmit a request."""
        return request_info_from_json(self.client.resubmit(request_id))

    def revoke(self, serial_hex: str | int, reason: str | int = "unspecified", invalidity_date: Any = None, *,
               by: str | None = None) -> Any:
        """Revoke a certificate."""
        return request_info_from_json(self.client.revoke(serial_hex, reason, invalidity_date))

    def unrevoke(self, serial_hex: str | int, *, by: str | None = None) -> Any:
        """Lift a certificateHold."""
        return request_info_from_json(self.client.unrevoke(serial_hex))

    def publish_crl(self) -> Any:
        """Publish a CRL."""
        return crl_info_from_json(self.client.publish_crl())

    def view(self, **kw: Any) -> list[Any]:
        """List requests (same filters as ``Authority.view``; ``limit=None`` means all, a page at a time)."""
        from ..ca.paging import collect

        if kw.get("limit", 100) is None:
            kw.pop("limit")
            offset = int(kw.pop("offset", 0) or 0)
            rows, _ = collect(lambda n, off: self.client.view(limit=n, offset=off, **kw), None, offset)
            return [request_info_from_json(r) for r in rows]
        return [request_info_from_json(r) for r in self.client.view(**kw)]

    def get_request(self, request_id: int) -> Any:
        """One request."""
        return request_info_from_json(self.client.get_request(request_id))

    def get_certificate(self, serial_or_request_id: str | int) -> bytes:
        """The DER certificate of a serial (str) or a request id (int)."""
        der: bytes = self.client.get_certificate(serial_or_request_id)
        return der

    def close(self) -> None:
        """Close the connection."""
        self.client.close()

    def __enter__(self) -> RemoteAuthority:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def service_running(home: Path | str | None) -> bool:
    """Whether a service answers on the local home's socket."""
    from ..client import Client, local_socket

    sock = local_socket(home)
    try:
        if not sock.exists():
            return False
    except PermissionError:  # another user's private home: Authority.open says whose (issue 9)
        return False
    try:
        with Client(f"unix:{sock}", timeout=10.0) as c:
            c.is_server_online()
    except CertSrvError:
        return False
    return True


@contextmanager
def ca_backend(home: Path | str | None, server: ServerSpec | str | None = None,
               passphrase: bytes | None = None) -> Iterator[Any]:
    """The Authority-like object a CA verb should use (see the module docstring); closed on exit.

    :param home: the CA home (None: ``$CERTSRV_HOME`` or ``~/.certsrv``).
    :param server: ``--server`` (a :class:`ServerSpec` or a server string); None: the local service if
        one answers on the home's socket, else the home directly.
    :param passphrase: the CA key passphrase (direct mode only).
    """
    spec = server if isinstance(server, ServerSpec) else ServerSpec(server)
    if spec.server is None and not service_running(home):
        from ..ca import Authority

        a = Authority.open(Home.at(home).root if home is not None else None, passphrase=passphrase)
        try:
            yield a
        finally:
            a.close()
        return
    remote = RemoteAuthority(spec.client(home))
    try:
        yield remote
    finally:
        remote.close()


__all__ = ["RemoteAuthority", "ServerSpec", "ca_backend", "server_options", "service_running"]
