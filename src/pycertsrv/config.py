"""The home's configuration, ``certsrv.toml``, as pydantic models (read with ``tomllib``)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import E_INVALIDARG, ERROR_FILE_NOT_FOUND, InvalidArgument, NotFound
from .fsutil import PRIVATE_FILE, atomic_write

CONFIG_FILE = "certsrv.toml"
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
ROLES = ("Administrator", "Officer", "Operator", "Auditor", "Enrollee")


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
    audit_log: str = "audit.log"


class RoleGrant(_Section):
    """One principal and its roles.

    ``principal`` is ``uid:N``, ``gid:N``, ``cert-subject:RFC4514`` or ``cert-sha256:HEX``.
    """

    principal: str
    roles: list[Literal["Administrator", "Officer", "Operator", "Auditor", "Enrollee"]]


class Config(_Section):
    """The whole ``certsrv.toml``."""

    ca: CASection = Field(default_factory=CASection)
    policy: PolicySection = Field(default_factory=PolicySection)
    crl: CRLSection = Field(default_factory=CRLSection)
    store: StoreSection = Field(default_factory=StoreSection)
    service: ServiceSection = Field(default_factory=ServiceSection)
    roles: list[RoleGrant] = Field(default_factory=list)


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
        raise InvalidArgument(E_INVALIDARG, str(path), f"{where}: {first['msg']}") from None


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
        if section == "roles":
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
    return "\n".join(lines)


def save(home: Path, cfg: Config) -> None:
    """Write ``home/certsrv.toml`` atomically."""
    atomic_write(Path(home) / CONFIG_FILE, dumps(cfg).encode(), mode=PRIVATE_FILE)
