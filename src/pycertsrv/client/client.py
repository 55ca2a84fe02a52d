"""The network client of the service (httpx): ``Client(server)`` with typed methods.

``server`` forms (DESIGN "--server"):

- ``unix:PATH`` — the service's Unix socket;
- ``HOST:PORT`` — TLS over TCP (``cert``/``key``: our client certificate, ``cafile``: the server's trust anchor);
- ``HOST\\CA Name`` — a config string (spec §2.18): a local HOST (localhost, this host's name) means the
  local home's socket, another HOST means TLS on ``HOST:8443``; the CA name must match the service's;
- None — the socket of the local home (``home``, ``$CERTSRV_HOME`` or ``~/.certsrv``).

Every service error is raised as the same :class:`CertSrvError` class with the same HRESULT
(:func:`pycertsrv.errors.error_from_json`); when nothing answers: Unavailable (RPC_S_SERVER_UNAVAILABLE
0x800706BA, spec §2.1).
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from ..commitnote import note_unapplied
from ..errors import (
    CERT_E_CN_NO_MATCH,
    CERT_E_EXPIRED,
    CERT_E_UNTRUSTEDROOT,
    CRYPT_E_REVOKED,
    E_ACCESSDENIED,
    E_FAIL,
    E_INVALIDARG,
    RPC_S_SERVER_UNAVAILABLE,
    TRUST_E_FAIL,
    AccessDenied,
    CertSrvError,
    InvalidArgument,
    Unavailable,
    error_from_json,
)
from ..home import Home
from ..spec import CSCONTROL_SHUTDOWN

DEFAULT_TLS_PORT = 8443
_DISPOSITIONS = {9: "pending", 20: "issued", 21: "revoked", 30: "error", 31: "denied"}
# TLS alerts by which a server refuses our client certificate (or its absence).
# OpenSSL X509_V_ERR_* codes of a refused server certificate -> the Windows trust HRESULT (winerror.h) and
# what the operator does about it.
_VERIFY_CODES: dict[int, tuple[int, str]] = {
    9: (CERT_E_EXPIRED, "is not valid yet; check the clocks, or renew the service's certificate (service.tls_cert)"),
    10: (CERT_E_EXPIRED, "has expired; renew the service's certificate (service.tls_cert)"),
    18: (CERT_E_UNTRUSTEDROOT, "is not trusted; give the CA that issued it with --cafile"),
    19: (CERT_E_UNTRUSTEDROOT, "is not trusted; give the CA that issued it with --cafile"),
    20: (CERT_E_UNTRUSTEDROOT, "is not trusted; give the CA that issued it with --cafile"),
    21: (CERT_E_UNTRUSTEDROOT, "is not trusted; give the CA that issued it with --cafile"),
    23: (CRYPT_E_REVOKED, "is revoked; the service needs a new certificate (service.tls_cert)"),
    62: (CERT_E_CN_NO_MATCH, "does not name this host; connect with a name the certificate carries"),
    64: (CERT_E_CN_NO_MATCH, "does not name this address; connect with a name the certificate carries"),
}
# TLS alerts by which the service refuses our client certificate for a reason it names.
_CLIENT_CERT_ALERTS: dict[str, tuple[int, str]] = {
    "certificate expired": (CERT_E_EXPIRED, "it has expired{when}; renew the client certificate (--cert)"),
    "certificate revoked": (CRYPT_E_REVOKED, "it is revoked; get a new client certificate (--cert)"),
}
_REJECTED_ALERTS = ("certificate required", "unknown ca", "bad certificate", "certificate unknown",
                    "access denied", "handshake failure", "certificate_required", "unknown_ca")


def _is_local_host(host: str) -> bool:
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


def _split_host_port(server: str, text: str) -> tuple[str, int | None]:
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


def _serial_text(serial: str | int) -> str:
    if isinstance(serial, int):
        return f"{serial:X}"
    s = serial.strip().replace(":", "").replace(" ", "")
    return s[2:] if s[:2].lower() == "0x" else s


class Client:
    """A connection to one service.

    :param server: ``unix:PATH``, ``HOST:PORT`` (TLS), ``HOST\\CA Name`` or None (the local home's socket).
    :param home: the local home (for the default socket).
    :param cert: our TLS client certificate (PEM file; may include the key).
    :param key: its private key (PEM file).
    :param cafile: trust anchor(s) for the server's certificate (default: the system's).
    :param timeout: seconds per request.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        home: Path | str | Home | None = None,
        cert: Path | str | None = None,
        key: Path | str | None = None,
        cafile: Path | str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.expected_name: str | None = None
        self._name_checked = False
        target: str | None = None  # None: local socket; "unix:PATH"; "HOST:PORT" (TLS)
        if server is not None and server.startswith("unix:"):
            target = server
        elif server is not None:
            hostpart, sep, name = server.partition("\\")
            if sep:
                self.expected_name = name.strip() or None
            host, port = _split_host_port(server, hostpart.strip())
            target = None if port is None and _is_local_host(host) else f"{host}:{port or DEFAULT_TLS_PORT}"
        tm = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        if target is None or target.startswith("unix:"):
            path = Path(target[5:]) if target else local_socket(home)
            self.address = f"unix:{path}"
            self.socket_path: Path | None = path
            self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://certsrv",
                                      trust_env=False, timeout=tm)
        else:
            host, _, port_text = target.rpartition(":")
            netloc = f"[{host}]" if ":" in host else host
            self.address = f"{netloc}:{port_text}"
            self.socket_path = None
            self._cert_path = Path(cert) if cert is not None else None
            try:
                ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
                if cert is not None:
                    ctx.load_cert_chain(str(cert), str(key) if key else None)
            except (OSError, ssl.SSLError) as e:
                raise InvalidArgument(E_INVALIDARG, str(server), f"cannot load TLS files: {e}") from None
            # Idle connections are kept (httpx's default drops them after 5 s): a backup session is held by
            # its connection, and a pause between two calls must not end it.
            self._http = httpx.Client(verify=ctx, base_url=f"https://{netloc}:{port_text}", timeout=tm, trust_env=False,
                                      limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                                          keepalive_expiry=None))
        self.server = server or self.address

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _our_cert_expiry(self) -> str:
        """`` (notAfter ...)`` of our client certificate, when it can be read (for the expired message)."""
        path = getattr(self, "_cert_path", None)
        if path is None:
            return ""
        try:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return ""
        return f" (notAfter {cert.not_valid_after_utc.isoformat()}, {path})"

    def _transport_error(self, e: httpx.TransportError, what: str) -> CertSrvError:
        cause: BaseException | None = e
        texts: list[str] = []
        while cause is not None:
            texts.append(str(cause))
            if isinstance(cause, PermissionError):
                return AccessDenied(E_ACCESSDENIED, self.address, f"{what}: permission denied on the socket")
            if isinstance(cause, ssl.SSLCertVerificationError):
                # The service's certificate failed our checks: name the trust failure, not "unavailable".
                hr, advice = _VERIFY_CODES.get(int(cause.verify_code or 0),
                                               (TRUST_E_FAIL, "was refused; check it and --cafile"))
                return CertSrvError(hr, self.address, f"{what}: the service's TLS certificate {advice} "
                                    f"(certificate verify failed: {cause.verify_message})")
            cause = cause.__cause__ or cause.__context__
        text = " ".join(texts).lower()
        for alert, (hr, reason) in _CLIENT_CERT_ALERTS.items():
            if f"alert {alert}" in text:
                return AccessDenied(hr, self.address, f"{what}: the service refused our TLS client certificate: "
                                    + reason.format(when=self._our_cert_expiry()))
        if "alert" in text and any(a in text for a in _REJECTED_ALERTS):
            return AccessDenied(E_ACCESSDENIED, self.address,
                                f"{what}: the service refused our TLS client certificate ({texts[-1][:200]})")
        # spec §2.1: "CA not running -> the call fails", observed 0x800706BA.
        return Unavailable(RPC_S_SERVER_UNAVAILABLE, self.address, f"{what}: the service does not answer "
                           f"({type(e).__name__}: {texts[-1][:200] if texts else ''})")

    def _request(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        what = f"{method} {path}"
        try:
            resp = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as e:
            raise self._transport_error(e, what) from None
        if resp.is_success:
            try:
                result = resp.json()
            except ValueError:
                raise CertSrvError(E_FAIL, what, f"HTTP {resp.status_code}: the answer is not JSON") from None
            note = result.get("commit") if isinstance(result, dict) else None
            if isinstance(note, dict):  # committed, not yet applied (pycertsrv.store.health): tell the caller's scope
                for lsn in note.get("lsns") or []:
                    note_unapplied(int(lsn))
            return result
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "hresult" in body:
            raise error_from_json(body)
        raise CertSrvError(E_FAIL, what, f"HTTP {resp.status_code}: {resp.text[:200]}")

    def _check_name(self) -> None:
        if self.expected_name is None or self._name_checked:
            return
        name = str(self._request("GET", "/online").get("name", ""))
        if name.casefold() != self.expected_name.casefold():
            # As ICertAdminD::Ping: a bad CA name is E_INVALIDARG (spec §4.2).
            raise InvalidArgument(E_INVALIDARG, self.server,
                                  f"the service at {self.address} serves CA {name!r}, not {self.expected_name!r}")
        self._name_checked = True

    def call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Any:
        """One JSON call; raises the service's CertSrvError, or Unavailable when nothing answers.

        :param method: HTTP method.
        :param path: endpoint path (e.g. ``/ca/requests``).
        :param json: request body.
        :param params: query parameters.
        :param headers: extra request headers.
        """
        self._check_name()
        return self._request(method, path, json=json, params=params, headers=headers)

    # ------------------------------------------------------------------ enrollment

    def submit(self, csr: bytes | str, *, template: str | None = None,
               attributes: dict[str, str] | Any = None) -> dict[str, Any]:
        """Submit a PKCS#10 request (PEM or DER); the request's JSON (disposition, certificate if issued).

        :param csr: the request, PEM or DER bytes (or PEM text).
        :param template: certificate template (default: the policy's).
        :param attributes: request attributes ``name: value`` (as certreq -attrib).
        """
        if isinstance(csr, bytes):
            text = csr.decode("ascii", "replace") if csr.lstrip().startswith(b"-----") else \
                base64.b64encode(csr).decode()
        else:
            text = csr
        body: dict[str, Any] = {"csr": text}
        if template is not None:
            body["template"] = template
        if attributes:
            body["attributes"] = dict(attributes)
        result: dict[str, Any] = self.call("POST", "/ca/requests", json=body)
        return result

    def get_request(self, request_id: int) -> dict[str, Any]:
        """A request's JSON (state, certificate once issued)."""
        result: dict[str, Any] = self.call("GET", f"/ca/requests/{int(request_id)}")
        return result

    def get_certificate(self, serial_or_request_id: str | int) -> bytes:
        """The DER certificate of a serial (str) or a request id (int)."""
        if isinstance(serial_or_request_id, int) and not isinstance(serial_or_request_id, bool):
            body = self.call("GET", f"/ca/requests/{serial_or_request_id}/certificate")
        else:
            serial = urllib.parse.quote(_serial_text(serial_or_request_id), safe="")
            body = self.call("GET", f"/ca/certificates/{serial}")
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(body["certificate_pem"].encode()).public_bytes(Encoding.DER)

    def ca_info(self) -> dict[str, Any]:
        """The CA's name and certificate."""
        result: dict[str, Any] = self.call("GET", "/ca")
        return result

    # ------------------------------------------------------------------ administration

    def issue(self, request_id: int) -> dict[str, Any]:
        """Issue a pending request."""
        result: dict[str, Any] = self.call("POST", f"/ca/requests/{int(request_id)}/issue")
        return result

    def deny(self, request_id: int) -> dict[str, Any]:
        """Deny a pending request."""
        result: dict[str, Any] = self.call("POST", f"/ca/requests/{int(request_id)}/deny")
        return result

    def resubmit(self, request_id: int) -> dict[str, Any]:
        """Resubmit a pending, denied or failed request."""
        result: dict[str, Any] = self.call("POST", f"/ca/requests/{int(request_id)}/resubmit")
        return result

    def revoke(self, serial: str | int, reason: str | int = "unspecified",
               invalidity_date: Any = None) -> dict[str, Any]:
        """Revoke a certificate.

        :param serial: hex serial (colons allowed).
        :param reason: RFC 5280 reason name or code.
        :param invalidity_date: a timezone-aware datetime or ISO 8601 text.
        """
        body: dict[str, Any] = {"reason": reason}
        if invalidity_date is not None:
            body["invalidity_date"] = invalidity_date if isinstance(invalidity_date, str) else \
                invalidity_date.isoformat()
        s = urllib.parse.quote(_serial_text(serial), safe="")
        result: dict[str, Any] = self.call("POST", f"/ca/certificates/{s}/revoke", json=body)
        return result

    def unrevoke(self, serial: str | int) -> dict[str, Any]:
        """Lift a certificateHold."""
        s = urllib.parse.quote(_serial_text(serial), safe="")
        result: dict[str, Any] = self.call("POST", f"/ca/certificates/{s}/unrevoke")
        return result

    def publish_crl(self) -> dict[str, Any]:
        """Publish a CRL now; its JSON (number, this/next update, entries, PEM)."""
        result: dict[str, Any] = self.call("POST", "/ca/crl")
        return result

    def view(self, *, disposition: str | int | None = None, serial: str | int | None = None,
             request_id: int | None = None, expired: bool | None = None, limit: int = 100,
             offset: int = 0) -> list[dict[str, Any]]:
        """Requests with filters and paging (oldest first)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if disposition is not None:
            params["disposition"] = _DISPOSITIONS.get(disposition, str(disposition)) if isinstance(
                disposition, int) else disposition.strip().lower()
        if serial is not None:
            params["serial"] = _serial_text(serial)
        if request_id is not None:
            params["request_id"] = int(request_id)
        if expired is not None:
            params["expired"] = "true" if expired else "false"
        items: list[dict[str, Any]] = self.call("GET", "/ca/requests", params=params)["items"]
        return items

    # ------------------------------------------------------------------ control

    def status(self) -> dict[str, Any]:
        """The service's status (name, state, listeners, recovery, the caller's roles)."""
        result: dict[str, Any] = self.call("GET", "/status")
        return result

    def health(self) -> dict[str, Any]:
        """The store's health (``status``: ok / degraded / failed, ``store``: the state line)."""
        result: dict[str, Any] = self.call("GET", "/health")
        return result

    def is_server_online(self) -> bool:
        """IsServerOnline (spec §2.1): True serving, False suspended; Unavailable when nothing answers."""
        self._check_name()
        return bool(self._request("GET", "/online")["online"])

    def server_control(self, flags: int) -> None:
        """ServerControl (spec §2.18): 1 = shut down; 2, 3 = no-op; other = E_INVALIDARG. Returns None."""
        self.call("POST", "/control", json={"flags": int(flags)})

    def backup(self, kind: str = "full") -> Any:
        """BackupPrepare: a :class:`pycertsrv.client.backup.BackupSession` for ``with client.backup(kind) as s:``.

        :param kind: ``"full"`` or ``"incremental"`` (added by the backup helper).
        """
        from .backup import open_backup

        return open_backup(self, kind)

    def backup_status(self) -> dict[str, Any] | None:
        """The running backup session (holder, start, kind, phase, progress), or None."""
        from .backup import backup_status

        return backup_status(self)

    def abort_backup(self) -> dict[str, Any]:
        """End the running backup session at once (Operator); returns its last status."""
        from .backup import abort_backup

        return abort_backup(self)

    def shutdown(self, wait: float = 0.0) -> None:
        """Ask the service to stop (CSCONTROL_SHUTDOWN); with ``wait``, until it stops answering (seconds)."""
        self.server_control(CSCONTROL_SHUTDOWN)
        deadline = time.monotonic() + wait
        while wait > 0:
            try:
                self._request("GET", "/online")
            except Unavailable:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.address,
                                  f"the service still answers {wait:.0f}s after the shutdown request")
            time.sleep(0.05)
