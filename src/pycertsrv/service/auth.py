"""Who is calling, and what they may do: principals, the role table, SO_PEERCRED and TLS client certificates.

Roles follow AD CS (spec §1.6, [CSRA §3.1.1.7]); the grants live in ``certsrv.toml`` ``[[roles]]``
(:class:`pycertsrv.config.RoleGrant`). The owner of the home directory is Administrator and Operator
by default; nobody else holds any role until configured.

Role table (``OPERATION_ROLES``; ``None`` = no role needed):

======================================  ===============================================
operation                               roles
======================================  ===============================================
submit                                  Enrollee, Officer, Administrator
get_request, get_certificate            Officer, Auditor, Administrator; Enrollee: own
view                                    Officer, Auditor, Administrator
issue, deny, resubmit, revoke,          Officer, Administrator
unrevoke, publish_crl
server_control (shutdown)               Administrator, Operator (spec §4.1)
status                                  any role
online, health, openapi, ca_info        anyone (GetServerState: no permission, spec §1.6)
backup/* (backup helper)                Operator (spec §1.6)
ui_backups (recovery-window page)       Operator, Auditor, Administrator
======================================  ===============================================

Administrator carries the Officer's and Auditor's rights: the AD CS default ACL grants the
Administrators group both "Manage CA" and "Issue and Manage Certificates", and role separation
(which would refuse a principal holding several roles) is off. Administrator does *not* imply
Operator: backup needs the backup privilege (spec §1.6), granted separately (the home owner
holds it by default).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import ROLES, RoleGrant
from ..errors import E_ACCESSDENIED, E_INVALIDARG, AccessDenied, InvalidArgument

ADMINISTRATOR = "Administrator"
OFFICER = "Officer"
OPERATOR = "Operator"
AUDITOR = "Auditor"
ENROLLEE = "Enrollee"

# Operation id -> roles allowed (None: anyone, even a caller with no role). Enrollee's access to
# get_request/get_certificate is limited to its own requests in the handler.
OPERATION_ROLES: dict[str, frozenset[str] | None] = {
    "submit": frozenset({ENROLLEE, OFFICER, ADMINISTRATOR}),
    "get_request": frozenset({ENROLLEE, OFFICER, AUDITOR, ADMINISTRATOR}),
    "get_certificate": frozenset({ENROLLEE, OFFICER, AUDITOR, ADMINISTRATOR}),
    "get_request_certificate": frozenset({ENROLLEE, OFFICER, AUDITOR, ADMINISTRATOR}),
    "view": frozenset({OFFICER, AUDITOR, ADMINISTRATOR}),
    "issue": frozenset({OFFICER, ADMINISTRATOR}),
    "deny": frozenset({OFFICER, ADMINISTRATOR}),
    "resubmit": frozenset({OFFICER, ADMINISTRATOR}),
    "revoke": frozenset({OFFICER, ADMINISTRATOR}),
    "unrevoke": frozenset({OFFICER, ADMINISTRATOR}),
    "publish_crl": frozenset({OFFICER, ADMINISTRATOR}),
    "server_control": frozenset({ADMINISTRATOR, OPERATOR}),
    "status": frozenset(ROLES),
    "online": None,
    "health": None,
    "openapi": None,
    "ca_info": None,
    # Issue 16: the recovery window is for whoever runs backups and whoever audits them.
    "ui_backups": frozenset({OPERATOR, AUDITOR, ADMINISTRATOR}),
}

PEERS_PURGE = 4096  # live Unix connections remembered before the closed ones are dropped

# Roles whose holders see every request, not only their own.
READ_ALL_ROLES = frozenset({OFFICER, AUDITOR, ADMINISTRATOR})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request.

    :param kind: ``"unix"`` (SO_PEERCRED), ``"tls"`` (verified client certificate) or ``"none"``.
    :param uid: peer uid (unix).
    :param gid: peer primary gid (unix).
    :param cert_subject: RFC 4514 subject of the client certificate (tls).
    :param cert_sha256: lowercase hex SHA-256 of the client certificate's DER (tls).
    :param roles: the roles granted to this caller.
    """

    kind: str = "none"
    uid: int | None = None
    gid: int | None = None
    cert_subject: str | None = None
    cert_sha256: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def ident(self) -> str:
        """Stable name of the caller, recorded as requester and in the audit log."""
        if self.kind == "unix":
            return f"uid:{self.uid}"
        if self.kind == "tls":
            return f"cert-subject:{self.cert_subject}"
        return "anonymous"

    def has_any(self, roles: Iterable[str]) -> bool:
        """Whether the caller holds at least one of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def to_json(self) -> dict[str, Any]:
        """The principal as plain data (status endpoint, audit log)."""
        d: dict[str, Any] = {"kind": self.kind, "ident": self.ident, "roles": sorted(self.roles)}
        if self.kind == "unix":
            d.update(uid=self.uid, gid=self.gid)
        elif self.kind == "tls":
            d.update(cert_subject=self.cert_subject, cert_sha256=self.cert_sha256)
        return d


ANONYMOUS = Principal()


def require(request: Any, *roles: str) -> Principal:
    """Raise AccessDenied (E_ACCESSDENIED, spec §1.6) unless the request's principal holds one of ``roles``."""
    principal: Principal = request.get("principal", ANONYMOUS)
    if not principal.has_any(roles):
        what = request.get("operation") or f"{request.method} {request.path}"
        held = ", ".join(sorted(principal.roles)) or "no role"
        raise AccessDenied(E_ACCESSDENIED, str(what),
                           f"{principal.ident} ({held}) needs one of: {', '.join(sorted(roles))}")
    return principal


def _norm_hex(s: str) -> str:
    return s.replace(":", "").strip().lower()


class RoleMap:
    """The role grants of one home, resolved for callers (cached; the config is fixed while serving).

    :param grants: the ``[[roles]]`` entries.
    :param owner_uid: uid owning the home directory (Administrator and Operator by default).
    """

    def __init__(self, grants: Iterable[RoleGrant], owner_uid: int | None) -> None:
        self.owner_uid = owner_uid
        self._uid: dict[int, set[str]] = {}
        self._gid: dict[int, set[str]] = {}
        self._subject: list[tuple[x509.Name | None, str, set[str]]] = []
        self._sha: dict[str, set[str]] = {}
        self._cache: dict[tuple[Any, ...], Principal] = {}
        # A Unix connection's principal, by the connection (see :meth:`peer`); closed ones are dropped in bulk.
        self._peers: dict[Any, Principal] = {}
        self._purge_at = PEERS_PURGE
        for g in grants:
            kind, sep, value = g.principal.partition(":")
            roles: set[str] = set(g.roles)
            if not sep or not value:
                raise InvalidArgument(E_INVALIDARG, "roles", f"bad principal {g.principal!r} (want uid:N, gid:N, "
                                      "cert-subject:RFC4514 or cert-sha256:HEX)")
            if kind in ("uid", "gid"):
                try:
                    num = int(value)
                except ValueError:
                    raise InvalidArgument(E_INVALIDARG, "roles", f"bad principal {g.principal!r}") from None
                (self._uid if kind == "uid" else self._gid).setdefault(num, set()).update(roles)
            elif kind == "cert-subject":
                try:
                    name: x509.Name | None = x509.Name.from_rfc4514_string(value)
                except ValueError:
                    name = None
                self._subject.append((name, value, roles))
            elif kind == "cert-sha256":
                self._sha.setdefault(_norm_hex(value), set()).update(roles)
            else:
                raise InvalidArgument(E_INVALIDARG, "roles", f"bad principal kind {kind!r} in {g.principal!r}")

    @classmethod
    def for_home(cls, root: Path, grants: Iterable[RoleGrant]) -> RoleMap:
        """The role map of the home at ``root`` (its directory owner gets the default roles)."""
        return cls(grants, os.stat(root).st_uid)

    def unix(self, uid: int, gid: int) -> Principal:
        """The principal of a local caller: grants for its uid, its primary gid and its account's groups."""
        key = ("unix", uid, gid)
        p = self._cache.get(key)
        if p is None:
            roles: set[str] = set()
            if uid == self.owner_uid:
                roles |= {ADMINISTRATOR, OPERATOR}
            roles |= self._uid.get(uid, set())
            for g in _groups_of(uid, gid):
                roles |= self._gid.get(g, set())
            p = Principal("unix", uid=uid, gid=gid, roles=frozenset(roles))
            self._cache[key] = p
        return p

    def peer(self, connection: Any, transport: Any) -> Principal:
        """The principal of the Unix connection ``connection`` (an aiohttp request's ``protocol``) on
        ``transport``; nobody when it is not a Unix socket.

        SO_PEERCRED is the peer's credentials as of ``connect()`` (socket(7)), fixed for the connection's life:
        it is read once per connection, not once per request (two system calls and a socket object each time).
        """
        p = self._peers.get(connection) if connection is not None else None
        if p is not None:
            return p
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return ANONYMOUS
        try:
            _pid, uid, gid = peer_credentials(sock)
        except OSError:
            return ANONYMOUS
        p = self.unix(uid, gid)
        if connection is not None:
            if len(self._peers) >= self._purge_at:
                # aiohttp's protocol drops its transport when the connection is lost.
                self._peers = {c: q for c, q in self._peers.items() if getattr(c, "transport", None) is not None}
                self._purge_at = max(PEERS_PURGE, 2 * len(self._peers))
            self._peers[connection] = p
        return p

    def certificate(self, der: bytes) -> Principal:
        """The principal of a TLS caller whose (already verified) client certificate is ``der``."""
        sha = hashlib.sha256(der).hexdigest()
        key = ("tls", sha)
        p = self._cache.get(key)
        if p is None:
            cert = x509.load_der_x509_certificate(der)
            subject = cert.subject
            roles = set(self._sha.get(sha, set()))
            text = subject.rfc4514_string()
            for name, raw, granted in self._subject:
                if (name is not None and name == subject) or raw == text:
                    roles |= granted
            p = Principal("tls", cert_subject=text, cert_sha256=sha, roles=frozenset(roles))
            self._cache[key] = p
        return p


def _groups_of(uid: int, gid: int) -> set[int]:
    groups = {gid}
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return groups
    try:
        groups.update(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        pass
    return groups


_PEERCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def identify(transport: Any, roles: RoleMap, connection: Any = None) -> Principal:
    """The principal behind a connection: TLS peer certificate, else SO_PEERCRED, else nobody.

    :param connection: what identifies the connection while it lives (an aiohttp request's ``protocol``): a Unix
        peer's credentials are then read once per connection. A TLS peer is read from its certificate at every
        request (no system call; a TLS 1.2 renegotiation may change the certificate).
    """
    if transport is None:
        return ANONYMOUS
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        der = ssl_object.getpeercert(binary_form=True)
        # The handshake required and verified a certificate (CERT_REQUIRED); without one, nobody.
        return roles.certificate(der) if der else ANONYMOUS
    return roles.peer(connection, transport)


def certificate_fingerprint(pem_or_der: bytes) -> str:
    """Lowercase hex SHA-256 of a certificate (for ``cert-sha256:`` grants)."""
    if pem_or_der.lstrip().startswith(b"-----"):
        cert = x509.load_pem_x509_certificate(pem_or_der)
        pem_or_der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(pem_or_der).hexdigest()
