"""The home's configuration, ``certsrv.toml``, as pydantic models (read with ``tomllib``)."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .archive.settings import ArchiveSection
from .errors import E_INVALIDARG, ERROR_FILE_NOT_FOUND, InvalidArgument, NotFound
from .fsutil import PRIVATE_FILE, atomic_write
from .home import Layout

CONFIG_FILE = Layout.CONFIG
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
ROLES = ("Administrator", "Officer", "Operator", "Auditor", "Enrollee")
Role = Literal["Administrator", "Officer", "Operator", "Auditor", "Enrollee"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CASection(_Section):
    """The CA itself: name, key type, validity of the CA certificate, key location."""

    name: str = "pycertsrv CA"
    key_type: KeyType = "ec-p256"
    validity_days: int = Field(3650, ge=1, le=36500)
    key_file: str = "private/ca.key"
    cert_file: str = "publish/ca.crt"
    key_passphrase_file: str | None = None
    key_passphrase_env: str | None = None
    subordinate: bool = False


class PolicySection(_Section):
    """Request policy and issuance defaults."""

    mode: Literal["issue", "pending"] = "issue"
    validity_days: int = Field(365, ge=1, le=36500)
    default_template: str = "server"
    crl_distribution_points: list[str] = Field(default_factory=list)
    aia_ca_issuers: list[str] = Field(default_factory=list)
    aia_ocsp: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(65536, ge=1024)


class CRLSection(_Section):
    """CRL publication."""

    validity_hours: int = Field(168, ge=1)
    period_hours: float = Field(24.0, gt=0)


class StoreSection(_Section):
    """The database engine."""

    log_size: int = Field(8 << 20, ge=64 << 10)
    checkpoint_records: int = Field(20000, ge=0)
    circular_logging: bool = False
    # Issue 12: a libpq URI (several hosts allowed) puts the database on PostgreSQL; absent: SQLite in HOME/db/.
    url: str | None = None
    # Issue 14: seconds a writer lease lives unrenewed before a standby node may take it (default at most 10 s);
    # the writer renews every third of it.
    lease_ttl: float = Field(10.0, ge=0.5, le=600.0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("store.url must be a PostgreSQL URL: postgresql://[USER@]HOST[,HOST2]/DBNAME")
        netloc = v.split("://", 1)[1].split("/", 1)[0]
        if ("@" in netloc and ":" in netloc.split("@", 1)[0]) or "password=" in v:
            # Issue 12: the password comes from libpq's own sources, never from a file others may read.
            raise ValueError("store.url must not carry a password: use PGPASSWORD, ~/.pgpass or a pg_service.conf")
        return v


class ServiceSection(_Section):
    """The daemon: listeners, TLS, limits, backup sessions."""

    socket: str = "certsrv.sock"
    # Who may connect to the Unix socket (issue 9, finding 7): None = the owner only (socket 0600); a group
    # name or gid = that group too (socket 0660 and, when the socket is in the home, the home 0710 with
    # that group so members can reach it but list or read nothing else).
    socket_group: str | int | None = None
    socket_mode: int | None = None  # overrides the mode above (kept for older certsrv.toml files)

    @field_validator("socket_group")
    @classmethod
    def _group(cls, v: str | int | None) -> str | int | None:
        if (isinstance(v, int) and v < 0) or (isinstance(v, str) and not v.strip()):
            raise ValueError("socket_group must be a group name or a gid >= 0")
        return v
    tcp_host: str | None = None
    tcp_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    max_body: int = Field(1 << 20, ge=1024)
    backup_session_timeout: float = Field(600.0, gt=0)
    # A session reading files ends after this many idle seconds (never more than backup_session_timeout).
    backup_idle_timeout: float = Field(60.0, gt=0)
    # Seconds a client gets to send a request body (slowloris: half-sent bodies are cut off after it).
    body_timeout: float = Field(30.0, gt=0)
    audit_log: str = "audit.log"
    # Issue 14: where clients reach this node when it is the writer ("unix:/path", "host:port"); standbys name
    # it in their NotWriter answers and clients follow it. Default: this node's own listeners.
    advertise: list[str] | None = None


class BackupSection(_Section):
    """Where the backup sets live, for the service's recovery-window page (``/ui/backups``)."""

    dir: str | None = None
    max_full_age: str = Field("8d", pattern=r"^\d+(\.\d+)?[smhdw]$")
    max_incremental_age: str = Field("26h", pattern=r"^\d+(\.\d+)?[smhdw]$")


class MetricsSection(_Section):
    """The Prometheus ``/metrics`` listener: off unless ``listen`` is set (least privilege: the series
    reveal activity and backup times, so nothing listens until the operator chooses where).

    ``listen`` is ``HOST:PORT`` (plain HTTP, no TLS: bind it to loopback or a scrape-only network) or a
    Unix socket path containing a ``/`` (relative ones to the home; created owner-only, 0600, unless
    ``socket_mode`` says wider, e.g. ``0o660`` for a Prometheus in the service user's group).
    """

    listen: str | None = None
    socket_mode: int = 0o600

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v


def parse_listen(value: str) -> tuple[str, int] | str:
    """``HOST:PORT`` (``[::1]:9108`` for IPv6) → ``(host, port)``; anything with a ``/`` is a Unix socket path.

    :raises ValueError: neither form.
    """
    if "/" in value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9108) or a Unix socket path, got {value!r}")
    return (host.strip("[]"), int(port))


class RoleGrant(_Section):
    """One principal and its roles.

    ``principal`` is ``uid:N``, ``gid:N``, ``cert-subject:RFC4514`` or ``cert-sha256:HEX``.
    """

    principal: str
    roles: list[Role]


# --------------------------------------------------------------------------------------- templates

# RFC 5280 §4.2.1.12 key purposes by name (a dotted OID is accepted too).
EKU_NAMES = {
    "serverAuth": "1.3.6.1.5.5.7.3.1",
    "clientAuth": "1.3.6.1.5.5.7.3.2",
    "codeSigning": "1.3.6.1.5.5.7.3.3",
    "emailProtection": "1.3.6.1.5.5.7.3.4",
    "timeStamping": "1.3.6.1.5.5.7.3.8",
    "OCSPSigning": "1.3.6.1.5.5.7.3.9",
}
KeyUsageName = Literal["digitalSignature", "nonRepudiation", "keyEncipherment", "dataEncipherment",
                       "keyAgreement", "keyCertSign", "cRLSign"]
# Roles that may ever enroll for a CA certificate: an Enrollee never can (issue 9, finding 1).
CA_ENROLL_ROLES = ("Officer", "Administrator")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A name pattern: a DNS name, optionally with a leftmost "*." meaning "any name below this domain".
_DNS_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                          re.I)


def _digital_signature() -> list[KeyUsageName]:
    return ["digitalSignature"]


class TemplateSection(_Section):
    """One certificate template (``[templates.NAME]``): what it puts in a certificate, who may enroll with
    it, and which names it accepts. The built-in five (:func:`builtin_templates`) always exist unless
    ``enabled = false``; a ``[templates.server]`` table changes only the keys it sets (the rest keep the
    built-in values), and a table with a new name adds a template.

    ``issue`` and ``enroll_roles`` left out take the safe default for the kind of template: a CA template
    always waits for an Officer and only Officers and Administrators may request it.
    """

    enabled: bool = True
    description: str = ""
    enroll_roles: list[Role] | None = None  # None: Enrollee, Officer, Administrator (CA: Officer, Administrator)
    key_usage: list[KeyUsageName] = Field(default_factory=_digital_signature)
    eku: list[str] = Field(default_factory=list)
    ca: bool = False
    path_length: int | None = Field(None, ge=0, le=16)
    max_validity_days: int = Field(365, ge=1, le=36500)
    issue: Literal["auto", "pending"] | None = None  # None: auto (CA templates: always pending)
    cn_not_in_san: Literal["refuse", "copy", "allow"] = "refuse"
    san_required: bool = False
    allowed_dns: list[str] = Field(default_factory=list)
    forbidden_dns: list[str] = Field(default_factory=list)
    allowed_ip: list[str] = Field(default_factory=list)
    allow_loopback: bool = False
    forbidden_cn: list[str] = Field(default_factory=list)
    certificate_policies: list[str] = Field(default_factory=list)

    @field_validator("eku")
    @classmethod
    def _eku(cls, v: list[str]) -> list[str]:
        for e in v:
            if e not in EKU_NAMES and not _OID.match(e):
                raise ValueError(f"unknown extended key usage {e!r} (one of {', '.join(EKU_NAMES)} or a dotted OID)")
        return v

    @field_validator("certificate_policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        for e in v:
            if not _OID.match(e):
                raise ValueError(f"certificate policy {e!r} is not a dotted OID (e.g. 2.23.140.1.2.1)")
        return v

    @field_validator("allowed_dns", "forbidden_dns")
    @classmethod
    def _dns_patterns(cls, v: list[str]) -> list[str]:
        for e in v:
            if not _DNS_PATTERN.match(e) or len(e) > 253:
                raise ValueError(f"name pattern {e!r} is not a DNS name or *.domain")
        return [e.lower() for e in v]

    @field_validator("allowed_ip")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for e in v:
            try:
                ipaddress.ip_network(e)
            except ValueError as err:
                raise ValueError(f"allowed_ip {e!r} is not a network ({err})") from None
        return v

    @model_validator(mode="after")
    def _coherent(self) -> TemplateSection:
        ku = set(self.key_usage)
        if self.ca:
            # RFC 5280 §4.2.1.9/§4.2.1.3: a CA certificate's key signs certificates.
            if "keyCertSign" not in ku:
                raise ValueError("a CA template (ca = true) needs keyCertSign in key_usage")
            if self.issue == "auto":
                raise ValueError("a CA template never issues at once: set issue = \"pending\" or leave it out")
            bad = [r for r in self.enroll_roles or [] if r not in CA_ENROLL_ROLES]
            if bad:
                raise ValueError(f"a CA template may be requested only by {' or '.join(CA_ENROLL_ROLES)}, "
                                 f"not {', '.join(bad)}")
        else:
            if ku & {"keyCertSign", "cRLSign"}:
                raise ValueError("keyCertSign and cRLSign need ca = true (RFC 5280 §4.2.1.3)")
            if self.path_length is not None:
                raise ValueError("path_length needs ca = true")
        if not ku:
            raise ValueError("key_usage must not be empty")
        if self.enroll_roles is not None and not self.enroll_roles:
            raise ValueError("enroll_roles must name at least one role")
        return self


def builtin_templates() -> dict[str, TemplateSection]:
    """The five built-in templates: server, client, server-client, user, subordinate."""
    return {
        # CA/B Forum BR §6.3.2: TLS server certificates issued from 2026-03-15 live at most 200 days;
        # browsers (and Go) ignore the CN, so the host must be in the SAN (RFC 6125 §6.4.4).
        "server": TemplateSection(description="TLS server (serverAuth)", eku=["serverAuth"],
                                  key_usage=["digitalSignature", "keyEncipherment"], max_validity_days=200,
                                  cn_not_in_san="copy", san_required=True),
        "client": TemplateSection(description="TLS client (clientAuth)", eku=["clientAuth"],
                                  max_validity_days=365, cn_not_in_san="allow"),
        "server-client": TemplateSection(description="TLS server and client", eku=["serverAuth", "clientAuth"],
                                         key_usage=["digitalSignature", "keyEncipherment"], max_validity_days=200,
                                         cn_not_in_san="copy", san_required=True),
        "user": TemplateSection(description="user: clientAuth and S/MIME", eku=["clientAuth", "emailProtection"],
                                key_usage=["digitalSignature", "keyEncipherment"], max_validity_days=365,
                                cn_not_in_san="allow"),
        "subordinate": TemplateSection(description="subordinate CA (pathLen 0)", ca=True, path_length=0,
                                       key_usage=["digitalSignature", "keyCertSign", "cRLSign"],
                                       max_validity_days=1825, cn_not_in_san="allow"),
    }


class Config(_Section):
    """The whole ``certsrv.toml``."""

    ca: CASection = Field(default_factory=CASection)
    policy: PolicySection = Field(default_factory=PolicySection)
    crl: CRLSection = Field(default_factory=CRLSection)
    store: StoreSection = Field(default_factory=StoreSection)
    service: ServiceSection = Field(default_factory=ServiceSection)
    backup: BackupSection = Field(default_factory=BackupSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    roles: list[RoleGrant] = Field(default_factory=list)
    archive: ArchiveSection | None = None  # issue 13: continuous log archiving (absent: off)
    templates: dict[str, TemplateSection] = Field(default_factory=builtin_templates)

    @field_validator("templates", mode="before")
    @classmethod
    def _merge_builtin(cls, v: Any) -> Any:
        # The built-ins first; a configured table overrides the keys it names (see TemplateSection).
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {n: t.model_dump(exclude_none=True) for n, t in builtin_templates().items()}
        for name, table in v.items():
            if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
                raise ValueError(f"template name {name!r}: use lowercase letters, digits, '-' and '_' (1..64)")
            if isinstance(table, TemplateSection):
                table = table.model_dump(exclude_unset=True)
            out[name] = {**out.get(name, {}), **table} if isinstance(table, dict) else table
        return out

    @model_validator(mode="after")
    def _default_template_exists(self) -> Config:
        enabled = [n for n, t in self.templates.items() if t.enabled]
        if self.policy.default_template.strip().lower() not in enabled:
            raise ValueError(f"policy.default_template {self.policy.default_template!r} is not an enabled "
                             f"template (one of {', '.join(enabled) or 'none'})")
        return self


def load(home: Path) -> Config:
    """Read and validate ``home/certsrv.toml``; a missing or bad file is a clear error."""
    path = Path(home) / CONFIG_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(path), "no certsrv.toml: not a CA home (run certsrv init)") from None
    except PermissionError:  # a private home of another user (issue 9): one line, not a traceback
        from .home import not_owner_error

        raise not_owner_error(Path(home), _owner(Path(home))) from None
    try:
        return Config.model_validate(tomllib.loads(raw.decode()))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(E_INVALIDARG, str(path), f"not valid TOML: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ").splitlines()[0]
        raise InvalidArgument(E_INVALIDARG, str(path), f"{where}: {msg}" if where else msg) from None


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(cfg: Config) -> str:
    """The configuration as TOML text (round-trips through :func:`load`)."""
    data = cfg.model_dump()
    lines: list[str] = []
    for section, values in data.items():
        if section in ("roles", "templates") or values is None:
            continue
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    for grant in data["roles"]:
        lines.append("[[roles]]")
        lines.append(f"principal = {_toml_value(grant['principal'])}")
        lines.append(f"roles = {_toml_value(grant['roles'])}")
        lines.append("")
    for name, values in data["templates"].items():
        lines.append(f"[templates.{name}]")
        for k, v in values.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def save(home: Path, cfg: Config) -> None:
    """Write ``home/certsrv.toml`` atomically."""
    atomic_write(Path(home) / CONFIG_FILE, dumps(cfg).encode(), mode=PRIVATE_FILE)
