"""The network client of the service (httpx): ``Client(server)`` with typed methods.

``server`` forms (DESIGN "--server"), one endpoint or several separated by commas (issue 14):

- ``unix:PATH`` — the service's Unix socket;
- ``HOST:PORT`` — TLS over TCP (``cert``/``key``: our client certificate, ``cafile``: the server's trust anchor);
- ``HOST\\CA Name`` — a config string (spec §2.18): a local HOST (localhost, this host's name) means the
  local home's socket, another HOST means TLS on ``HOST:8443``; the CA name must match the service's;
- None — the socket of the local home (``home``, ``$CERTSRV_HOME`` or ``~/.certsrv``).

Several endpoints (nodes of one CA, issue 14): a read goes to the first that answers (the last one that answered
first). A write goes to the writer: a standby answers NotWriter (503, ERROR_HOST_NODE_NOT_RESOURCE_OWNER) naming
the writer's endpoints, which are tried first, then the others; a refused connection moves to the next; the
client keeps cycling with backoff up to ``failover_timeout`` (a takeover takes up to the lease time) and
remembers the writer it found. A write whose connection broke after it was sent, or which the service answered
OutcomeUnknown (RPC_S_CALL_FAILED), may or may not have happened: a submit is sent again with its request key
(the same key returns the first answer, never a second certificate); any other write raises OutcomeUnknown.

Every service error is raised as the same :class:`CertSrvError` class with the same HRESULT
(:func:`pycertsrv.errors.error_from_json`); when nothing answers: Unavailable (RPC_S_SERVER_UNAVAILABLE
0x800706BA, spec §2.1).
"""

from __future__ import annotations

import base64
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
    RPC_S_CALL_FAILED,
    RPC_S_CALL_FAILED_DNE,
    RPC_S_SERVER_UNAVAILABLE,
    TRUST_E_FAIL,
    AccessDenied,
    CertSrvError,
    InvalidArgument,
    NotWriter,
    OutcomeUnknown,
    Unavailable,
    error_from_json,
)
from ..home import Home
from ..requestkey import checked_key, new_request_key
from ..spec import CSCONTROL_SHUTDOWN
from .endpoints import Endpoint, sent_before_failure, split_servers

FAILOVER_TIMEOUT = 30.0  # issue 14: a takeover takes up to the lease time (at most 10 s by default)
_MAX_ENDPOINTS = 16  # endpoints learned from NotWriter answers are added up to this many
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


def _serial_text(serial: str | int) -> str:
    if isinstance(serial, int):
        return f"{serial:X}"
    s = serial.strip().replace(":", "").replace(" ", "")
    return s[2:] if s[:2].lower() == "0x" else s


class _Broken(Exception):
    """A call whose connection failed after the request was sent (its outcome is unknown)."""

    def __init__(self, error: CertSrvError) -> None:
        super().__init__(str(error))
        self.error = error


class Client:
    """A connection to a service, or to the nodes of one CA (issue 14).

    :param server: one or several endpoints separated by commas: ``unix:PATH``, ``HOST:PORT`` (TLS),
        ``HOST\\CA Name``; None: the local home's socket.
    :param home: the local home (for the default socket).
    :param cert: our TLS client certificate (PEM file; may include the key).
    :param key: its private key (PEM file).
    :param cafile: trust anchor(s) for the server's certificate (default: the system's).
    :param timeout: seconds per request.
    :param failover_timeout: how long a write keeps looking for the writer (seconds) when there are several
        endpoints, a node named another writer, or a submit's outcome is unknown; 0: each endpoint once.
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
        failover_timeout: float = FAILOVER_TIMEOUT,
    ) -> None:
        self._home = home
        self._timeout = timeout
        self.failover_timeout = float(failover_timeout)
        self._cert_path = Path(cert) if cert is not None else None
        self._tls_files = (cert, key, cafile)
        self._ctx: ssl.SSLContext | None = None
        self._server_text = server
        self.endpoints: list[Endpoint] = []
        try:
            for spec in split_servers(server):
                self.endpoints.append(Endpoint(spec, home, self._tls, timeout))
        except BaseException:
            self.close()
            raise
        self._current = self.endpoints[0]  # the one that answered last (reads start there)
        self._writer: Endpoint | None = None  # the writer found last (writes start there)
        self.expected_name = self._current.expected_name
        self.server = server or self.address

    def _tls(self) -> ssl.SSLContext:
        if self._ctx is None:
            cert, key, cafile = self._tls_files
            try:
                ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
                if cert is not None:
                    ctx.load_cert_chain(str(cert), str(key) if key else None)
            except (OSError, ssl.SSLError) as e:
                raise InvalidArgument(E_INVALIDARG, str(self._server_text),
                                      f"cannot load TLS files: {e}") from None
            self._ctx = ctx
        return self._ctx

    # ------------------------------------------------------------------ plumbing

    @property
    def address(self) -> str:
        """The address of the endpoint in use (the last that answered)."""
        return self._current.address

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket of the endpoint in use (None: TLS)."""
        return self._current.socket_path

    @property
    def _http(self) -> httpx.Client:
        return self._current.http

    @property
    def writer(self) -> str | None:
        """The address of the writer found last (None: no write answered yet)."""
        return self._writer.address if self._writer is not None else None

    def close(self) -> None:
        """Close the connection pools."""
        for ep in self.endpoints:
            ep.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _our_cert_expiry(self) -> str:
        """`` (notAfter ...)`` of our client certificate, when it can be read (for the expired message)."""
        path = self._cert_path
        if path is None:
            return ""
        try:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return ""
        return f" (notAfter {cert.not_valid_after_utc.isoformat()}, {path})"

    def _transport_error(self, e: httpx.TransportError, what: str, address: str | None = None) -> CertSrvError:
        address = address or self.address
        cause: BaseException | None = e
        texts: list[str] = []
        while cause is not None:
            texts.append(str(cause))
            if isinstance(cause, PermissionError):
                return AccessDenied(E_ACCESSDENIED, address, f"{what}: permission denied on the socket")
            if isinstance(cause, ssl.SSLCertVerificationError):
                # The service's certificate failed our checks: name the trust failure, not "unavailable".
                hr, advice = _VERIFY_CODES.get(int(cause.verify_code or 0),
                                               (TRUST_E_FAIL, "was refused; check it and --cafile"))
                return CertSrvError(hr, address, f"{what}: the service's TLS certificate {advice} "
                                    f"(certificate verify failed: {cause.verify_message})")
            cause = cause.__cause__ or cause.__context__
        text = " ".join(texts).lower()
        for alert, (hr, reason) in _CLIENT_CERT_ALERTS.items():
            if f"alert {alert}" in text:
                return AccessDenied(hr, address, f"{what}: the service refused our TLS client certificate: "
                                    + reason.format(when=self._our_cert_expiry()))
        if "alert" in text and any(a in text for a in _REJECTED_ALERTS):
            return AccessDenied(E_ACCESSDENIED, address,
                                f"{what}: the service refused our TLS client certificate ({texts[-1][:200]})")
        # spec §2.1: "CA not running -> the call fails", observed 0x800706BA.
        return Unavailable(RPC_S_SERVER_UNAVAILABLE, address, f"{what}: the service does not answer "
                           f"({type(e).__name__}: {texts[-1][:200] if texts else ''})")

    def _request(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, endpoint: Endpoint | None = None) -> Any:
        """One request to ``endpoint`` (default: the one in use); raises the service's error, Unavailable when
        nothing was sent, or :class:`_Broken` when the connection failed after the request was sent."""
        ep = endpoint or self._current
        what = f"{method} {path}"
        try:
            resp = ep.http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as e:
            err = self._transport_error(e, what, ep.address)
            if isinstance(err, Unavailable) and sent_before_failure(e):
                raise _Broken(err) from None
            raise err from None
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

    def _check_name(self, endpoint: Endpoint | None = None) -> None:
        ep = endpoint or self._current
        if ep.expected_name is None or ep.name_checked:
            return
        name = str(self._once(ep, "GET", "/online").get("name", ""))
        if name.casefold() != ep.expected_name.casefold():
            # As ICertAdminD::Ping: a bad CA name is E_INVALIDARG (spec §4.2).
            raise InvalidArgument(E_INVALIDARG, self.server,
                                  f"the service at {ep.address} serves CA {name!r}, not {ep.expected_name!r}")
        ep.name_checked = True

    def _once(self, ep: Endpoint, method: str, path: str, **kw: Any) -> Any:
        """One request; a connection broken after sending is an Unavailable here (a read: safe to repeat)."""
        try:
            return self._request(method, path, endpoint=ep, **kw)
        except _Broken as b:
            raise b.error from None

    def call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, *, write: bool | None = None, resend: bool = False) -> Any:
        """One JSON call; raises the service's CertSrvError, or Unavailable when nothing answers.

        :param method: HTTP method.
        :param path: endpoint path (e.g. ``/ca/requests``).
        :param json: request body.
        :param params: query parameters.
        :param headers: extra request headers.
        :param write: whether the call changes the CA (default: every method but GET and HEAD): it goes to the
            writer, following NotWriter answers.
        :param resend: the write is safe to send again when its outcome is unknown (a submit with its request
            key); otherwise an unknown outcome raises OutcomeUnknown.
        """
        if headers and "X-Backup-Hold" in headers:  # a backup session lives on one node: no failover
            self._check_name()
            return self._once(self._current, method, path, json=json, params=params, headers=headers)
        kw: dict[str, Any] = {"json": json, "params": params, "headers": headers}
        if write if write is not None else method not in ("GET", "HEAD"):
            return self._write(method, path, resend, kw)
        return self._read(method, path, kw)

    def _read(self, method: str, path: str, kw: dict[str, Any]) -> Any:
        """The first endpoint that answers, starting with the one that answered last."""
        last: CertSrvError | None = None
        for ep in self._order(self._current):
            try:
                self._check_name(ep)
                result = self._once(ep, method, path, **kw)
            except NotWriter as e:  # a node that serves no reads either: another may
                last = e
                continue
            except Unavailable as e:
                last = e
                continue
            self._current = ep
            return result
        assert last is not None
        raise last

    def _order(self, first: Endpoint | None, hint: list[Endpoint] | None = None) -> list[Endpoint]:
        """Endpoints to try: the hinted (a NotWriter's writer) first, then ``first``, then the others."""
        out = list(hint or [])
        if first is not None and first not in out:
            out.append(first)
        out += [ep for ep in self.endpoints if ep not in out]
        return out

    def _learn(self, writer: dict[str, Any]) -> list[Endpoint]:
        """The endpoints a NotWriter names (added to ours when new: the writer may be a node we were not given)."""
        found: list[Endpoint] = []
        for spec in writer.get("endpoints") or []:
            if not isinstance(spec, str):
                continue
            try:
                probe = Endpoint(spec, self._home, self._tls, self._timeout)
            except CertSrvError:
                continue
            known = next((ep for ep in self.endpoints if ep.address == probe.address), None)
            if known is not None:
                probe.close()
            elif len(self.endpoints) < _MAX_ENDPOINTS:
                known = probe
                self.endpoints.append(probe)
            else:
                probe.close()
            if known is not None and known not in found:
                found.append(known)
        return found

    def _write(self, method: str, path: str, resend: bool, kw: dict[str, Any]) -> Any:
        """Send a write to the writer (see the module docstring): NotWriter is followed, a refused connection
        moves on, and the endpoints are cycled with backoff up to ``failover_timeout`` once a failover is
        plausible (several endpoints, a node named another writer, or an unknown outcome to resend)."""
        what = f"{method} {path}"
        deadline = time.monotonic() + self.failover_timeout
        pause = 0.05
        hint: list[Endpoint] = []  # the endpoints the last NotWriter named: tried first
        tried: set[int] = set()  # endpoints tried in this sweep (by id: an Endpoint is not hashable by value)
        last: CertSrvError | None = None
        cycling = len(self.endpoints) > 1
        unknown: CertSrvError | None = None  # the first unknown outcome (a resend was sent since)
        while True:
            followed = False
            for ep in self._order(self._writer or self._current, hint):
                if id(ep) in tried:
                    continue
                tried.add(id(ep))
                try:
                    self._check_name(ep)
                    result = self._request(method, path, endpoint=ep, **kw)
                except NotWriter as e:
                    last, cycling = e, True
                    hint = self._learn(e.writer)
                    if any(id(x) not in tried for x in hint):  # follow the writer it names at once
                        followed = True
                        break
                    continue
                except _Broken as b:
                    if not resend:
                        raise self._unknown(what, b.error) from None
                    unknown, last, cycling = unknown or b.error, b.error, True
                    continue
                except OutcomeUnknown as e:  # the node lost its database while committing
                    if not resend:
                        raise
                    unknown, last, cycling = unknown or e, e, True
                    continue
                except Unavailable as e:  # nothing was sent (refused, no such socket) or the node is stopping
                    last = e
                    continue
                except CertSrvError as e:
                    if e.hresult != RPC_S_CALL_FAILED_DNE:
                        raise
                    last = e  # the node says nothing was done: safe to send elsewhere
                    continue
                self._current = self._writer = ep
                return result
            if followed and time.monotonic() < deadline:
                continue
            if not cycling or time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))  # every endpoint tried: back off
            pause = min(pause * 2, 1.0)
            tried.clear()
        assert last is not None
        if unknown is not None:
            raise self._unknown(what, unknown, resent=True)
        if cycling and self.failover_timeout > 0:
            extra = f" (no writer answered within {self.failover_timeout:g} s; tried " \
                    f"{', '.join(ep.address for ep in self.endpoints)})"
            if isinstance(last, NotWriter):
                raise NotWriter(last.hresult, last.function, last.message + extra, writer=last.writer)
            raise type(last)(last.hresult, last.function, last.message + extra)
        raise last

    def _unknown(self, what: str, cause: CertSrvError, resent: bool = False) -> OutcomeUnknown:
        """The OutcomeUnknown of a write: the line says it may or may not have happened and what to do."""
        if resent:
            return OutcomeUnknown(RPC_S_CALL_FAILED, what,
                                  f"it may or may not have been written: {cause.message}; it was sent again with "
                                  f"the same request key and no node answered within {self.failover_timeout:g} s; "
                                  "submit again with the same --request-key (the same key returns the first "
                                  "answer, never a second certificate)")
        return OutcomeUnknown(RPC_S_CALL_FAILED, what,
                              f"it may or may not have been done: the connection to {cause.function} failed after "
                              f"the request was sent ({cause.message.partition(': ')[2] or cause.message}); check "
                              "with `certsrv view` before retrying")

    # ------------------------------------------------------------------ enrollment

    def submit(self, csr: bytes | str, *, template: str | None = None,
               attributes: dict[str, str] | Any = None, request_key: str | None = None) -> dict[str, Any]:
        """Submit a PKCS#10 request (PEM or DER); the request's JSON (disposition, certificate if issued, and
        ``request_key``).

        Every submit carries a request key (issue 14): when its outcome is unknown (the connection broke after
        it was sent, or the node lost its database while committing) it is sent again with the same key, to the
        writer, until ``failover_timeout``; the service answers a key it holds with the first answer, so a
        retried submit never makes a second certificate.

        :param csr: the request, PEM or DER bytes (or PEM text).
        :param template: certificate template (default: the policy's).
        :param attributes: request attributes ``name: value`` (as certreq -attrib).
        :param request_key: the idempotency key (1..128 printable ASCII; default: a new uuid4 hex). Give the key
            of an earlier submit to get its answer.
        """
        if isinstance(csr, bytes):
            text = csr.decode("ascii", "replace") if csr.lstrip().startswith(b"-----") else \
                base64.b64encode(csr).decode()
        else:
            text = csr
        key = checked_key(request_key) if request_key is not None else new_request_key()
        body: dict[str, Any] = {"csr": text, "request_key": key}
        if template is not None:
            body["template"] = template
        if attributes:
            body["attributes"] = dict(attributes)
        try:
            result: dict[str, Any] = self.call("POST", "/ca/requests", json=body, resend=True)
        except OutcomeUnknown as e:
            raise OutcomeUnknown(e.hresult, e.function, f"{e.message} [request key {key}]") from None
        result.setdefault("request_key", key)
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
        return bool(self.call("GET", "/online")["online"])

    def server_control(self, flags: int) -> None:
        """ServerControl (spec §2.18): 1 = shut down; 2, 3 = no-op; other = E_INVALIDARG. Returns None.

        It controls one node: the first endpoint that answers (never sent to a second one)."""
        self.call("GET", "/online")  # picks the node (the first that answers)
        self._once(self._current, "POST", "/control", json={"flags": int(flags)})

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
        node = self._current
        while wait > 0:
            try:
                self._once(node, "GET", "/online")
            except Unavailable:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.address,
                                  f"the service still answers {wait:.0f}s after the shutdown request")
            time.sleep(0.05)
