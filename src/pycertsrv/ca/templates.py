"""Certificate templates: what an issued certificate carries (keyUsage, extendedKeyUsage, basicConstraints,
certificatePolicies, validity) and the rights and name rules of enrolling with it (the AD CS notion,
reduced to what a standalone CA needs).

Templates are configured in ``certsrv.toml`` ``[templates.NAME]`` (:class:`pycertsrv.config.TemplateSection`,
validated when the home is opened); the built-in five are the defaults. :func:`templates_of` turns the
configuration into :class:`Template` objects, :func:`template_listing` is what ``certsrv templates`` shows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from ..config import CA_ENROLL_ROLES, EKU_NAMES, Config, PolicySection, TemplateSection, builtin_templates
from ..errors import CERTSRV_E_UNSUPPORTED_CERT_TYPE, InvalidArgument

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ENROLL_ROLES = ("Enrollee", "Officer", "Administrator")
_EKU_BY_OID = {v: k for k, v in EKU_NAMES.items()}
# Key usages only an RSA key can perform (key transport), and only a non-RSA key (key agreement):
# RFC 5280 §4.2.1.3, RFC 8813 §3 (ECDH keys: keyAgreement, never keyEncipherment).
_RSA_ONLY = {"keyEncipherment", "dataEncipherment"}
_NON_RSA_ONLY = {"keyAgreement"}


@dataclass(frozen=True)
class Template:
    """One certificate template.

    :param name: template name (``--template`` or the ``CertificateTemplate`` request attribute).
    :param eku: extendedKeyUsage OIDs (empty: no EKU extension).
    :param ca: issue a CA certificate (basicConstraints cA=TRUE): never at once, never to an Enrollee.
    :param path_length: pathLenConstraint for CA certificates.
    :param key_usages: keyUsage bit names (RFC 5280 §4.2.1.3 spelling).
    :param enroll_roles: roles that may request a certificate of this template.
    :param max_validity_days: the longest validity a certificate of this template gets.
    :param issue: ``"auto"`` (issued at once when policy.mode allows) or ``"pending"`` (an Officer decides).
    :param cn_not_in_san: a CN missing from the SAN is ``refuse``\\ d, ``copy``\\ d into it, or ``allow``\\ ed.
    :param san_required: the certificate must name a host (dNSName or iPAddress) in its SAN.
    :param allowed_dns: DNS patterns names must match (empty: any); ``*.d`` = any name below ``d``.
    :param forbidden_dns: DNS patterns no name may match (checked after ``allowed_dns``).
    :param allowed_ip: networks IP addresses must lie in (empty: any usable address).
    :param allow_loopback: accept 127.0.0.0/8, ::1 and ``localhost`` names.
    :param forbidden_cn: CN patterns (shell-style, case-insensitive) refused.
    :param policies: certificatePolicies OIDs (empty: no extension).
    """

    name: str
    eku: tuple[ObjectIdentifier, ...]
    ca: bool = False
    path_length: int | None = None
    key_usages: frozenset[str] = frozenset({"digitalSignature"})
    description: str = ""
    enroll_roles: frozenset[str] = frozenset(DEFAULT_ENROLL_ROLES)
    max_validity_days: int = 365
    issue: str = "auto"
    cn_not_in_san: str = "refuse"
    san_required: bool = False
    allowed_dns: tuple[str, ...] = ()
    forbidden_dns: tuple[str, ...] = ()
    allowed_ip: tuple[IPNetwork, ...] = field(default=())
    allow_loopback: bool = False
    forbidden_cn: tuple[str, ...] = ()
    policies: tuple[ObjectIdentifier, ...] = ()

    @property
    def may_enroll(self) -> frozenset[str]:
        """The roles that may request this template: a CA template never admits an Enrollee, whatever
        the configuration says (issue 9: an Enrollee with a CA certificate mints its own trust)."""
        return self.enroll_roles & frozenset(CA_ENROLL_ROLES) if self.ca else self.enroll_roles

    def waits_for_officer(self, policy: PolicySection) -> bool:
        """Whether a new request of this template is left pending: policy.mode = pending, the template's
        ``issue = "pending"``, or a CA template (never issued at once, whatever the configuration says)."""
        return self.ca or self.issue == "pending" or policy.mode == "pending"

    def key_usage(self, rsa_key: bool) -> x509.KeyUsage:
        """The keyUsage for a certificate of this template (RFC 5280 §4.2.1.3).

        :param rsa_key: the subject key is RSA (only RSA keys do key transport; only EC/X keys agree).
        """
        ku = set(self.key_usages)
        ku -= _NON_RSA_ONLY if rsa_key else _RSA_ONLY
        if not ku:
            ku = {"digitalSignature"}
        return x509.KeyUsage(
            digital_signature="digitalSignature" in ku,
            content_commitment="nonRepudiation" in ku,
            key_encipherment="keyEncipherment" in ku,
            data_encipherment="dataEncipherment" in ku,
            key_agreement="keyAgreement" in ku,
            key_cert_sign=self.ca and "keyCertSign" in ku,
            crl_sign=self.ca and "cRLSign" in ku,
            encipher_only=False,
            decipher_only=False,
        )

    def to_json(self, policy: PolicySection | None = None) -> dict[str, Any]:
        """The template's rights and limits as plain data (``certsrv templates --json``)."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "enroll_roles": sorted(self.may_enroll),
            "issue": "pending" if self.ca or self.issue == "pending" else "auto",
            "ca": self.ca,
            "path_length": self.path_length,
            "key_usage": sorted(self.key_usages),
            "eku": [_EKU_BY_OID.get(o.dotted_string, o.dotted_string) for o in self.eku],
            "max_validity_days": self.max_validity_days,
            "cn_not_in_san": self.cn_not_in_san,
            "san_required": self.san_required,
            "allowed_dns": list(self.allowed_dns),
            "forbidden_dns": list(self.forbidden_dns),
            "allowed_ip": [str(n) for n in self.allowed_ip],
            "allow_loopback": self.allow_loopback,
            "forbidden_cn": list(self.forbidden_cn),
            "certificate_policies": [o.dotted_string for o in self.policies],
        }
        if policy is not None:
            d["issue"] = "pending" if self.waits_for_officer(policy) else "auto"
            d["validity_days"] = min(self.max_validity_days, policy.validity_days)
        return d


def from_section(name: str, t: TemplateSection) -> Template:
    """A :class:`Template` from its (validated) configuration."""
    roles = t.enroll_roles if t.enroll_roles is not None else (CA_ENROLL_ROLES if t.ca else DEFAULT_ENROLL_ROLES)
    return Template(
        name=name,
        eku=tuple(ObjectIdentifier(EKU_NAMES.get(e, e)) for e in t.eku),
        ca=t.ca,
        path_length=t.path_length if t.ca else None,
        key_usages=frozenset(t.key_usage),
        description=t.description,
        enroll_roles=frozenset(roles),
        max_validity_days=t.max_validity_days,
        issue=t.issue or ("pending" if t.ca else "auto"),
        cn_not_in_san=t.cn_not_in_san,
        san_required=t.san_required,
        allowed_dns=tuple(t.allowed_dns),
        forbidden_dns=tuple(t.forbidden_dns),
        allowed_ip=tuple(ipaddress.ip_network(n) for n in t.allowed_ip),
        allow_loopback=t.allow_loopback,
        forbidden_cn=tuple(p.lower() for p in t.forbidden_cn),
        policies=tuple(ObjectIdentifier(o) for o in t.certificate_policies),
    )


def templates_of(cfg: Config) -> dict[str, Template]:
    """The enabled templates of a configuration, by name."""
    return {n: from_section(n, t) for n, t in cfg.templates.items() if t.enabled}


TEMPLATES: dict[str, Template] = {n: from_section(n, t) for n, t in builtin_templates().items()}


def get_template(name: str, templates: dict[str, Template] | None = None) -> Template:
    """The template called ``name`` (case-insensitive) or CERTSRV_E_UNSUPPORTED_CERT_TYPE.

    :param name: the template name.
    :param templates: the home's templates (default: the built-in five).
    """
    known = TEMPLATES if templates is None else templates
    t = known.get(name.strip().lower())
    if t is None:
        raise InvalidArgument(CERTSRV_E_UNSUPPORTED_CERT_TYPE, "template",
                              f"unknown certificate template {name[:64]!r} (one of {', '.join(known)}); "
                              "run certsrv templates to list them")
    return t


def template_listing(cfg: Config) -> list[dict[str, Any]]:
    """Every enabled template with its rights and limits, as ``certsrv templates`` shows them."""
    return [t.to_json(cfg.policy) for t in templates_of(cfg).values()]


def list_templates(home: Path | str | None) -> list[dict[str, Any]]:
    """The templates of the home at ``home`` (its certsrv.toml, validated: a bad one is a one-line error).

    :param home: the CA home (None: ``$CERTSRV_HOME`` or ``~/.certsrv``).
    """
    from .. import config as config_mod
    from ..home import Home

    return template_listing(config_mod.load(Home.at(home).root))


__all__ = ["TEMPLATES", "Template", "from_section", "get_template", "list_templates", "template_listing",
           "templates_of"]
