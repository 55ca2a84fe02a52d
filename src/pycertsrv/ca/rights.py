"""Who may enroll for what: a template's enroll roles, and subjects that a role grant turns into a role.

Issue 9, finding 1: an Enrollee obtained a CA certificate (template ``subordinate``), signed itself a
client certificate ``CN=ops``, and a ``cert-subject:CN=ops`` grant made it Operator. Two rules close it:

- A template names the roles that may enroll with it; a CA template admits only Officer and Administrator
  whatever the configuration says (:attr:`Template.may_enroll`).
- A subject that a ``[[roles]]`` ``cert-subject:`` grant maps to roles is issued only to an Officer or an
  Administrator (the roles that can issue anything anyway): an Enrollee asking for ``CN=ops`` is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from ..config import CA_ENROLL_ROLES, Config, RoleGrant
from ..errors import (
    CERTSRV_E_BAD_REQUESTSUBJECT,
    CERTSRV_E_TEMPLATE_DENIED,
    E_ACCESSDENIED,
    AccessDenied,
    InvalidArgument,
)
from .names import NamePlan, check_names
from .policy import ParsedRequest
from .templates import Template


def _held(roles: Iterable[str]) -> str:
    return ", ".join(sorted(roles)) or "no role"


def check_enroll(tmpl: Template, roles: frozenset[str], who: str) -> None:
    """Refuse (CERTSRV_E_TEMPLATE_DENIED) a caller whose roles do not include one of the template's.

    :param tmpl: the template asked for (by ``--template`` or the ``CertificateTemplate`` attribute alike).
    :param roles: the caller's roles.
    :param who: the caller, for the message.
    """
    allowed = tmpl.may_enroll
    if roles.isdisjoint(allowed):
        kind = "CA template" if tmpl.ca else "template"
        raise AccessDenied(CERTSRV_E_TEMPLATE_DENIED, "submit",
                           f"{who} ({_held(roles)}) may not enroll with {kind} {tmpl.name!r}, which admits "
                           f"{_held(allowed)}; ask an Officer to submit it, or use another template "
                           "(certsrv templates lists them)")


def _fold(name: str) -> str:
    return name.replace(" ", "").casefold()


def check_role_subject(subject: x509.Name, grants: Iterable[RoleGrant], roles: frozenset[str], who: str) -> None:
    """Refuse (E_ACCESSDENIED) a certificate whose subject a ``cert-subject:`` grant maps to roles, unless
    the caller is an Officer or Administrator.

    Matching is looser than the service's (case and spaces ignored): refusing a near miss costs an Enrollee
    nothing, while issuing an exact one would hand over the grant's roles.
    """
    if not roles.isdisjoint(CA_ENROLL_ROLES) or len(subject) == 0:
        return
    text = _fold(subject.rfc4514_string())
    for g in grants:
        kind, _, value = g.principal.partition(":")
        if kind != "cert-subject" or not value:
            continue
        try:
            same = x509.Name.from_rfc4514_string(value) == subject
        except ValueError:
            same = False
        if same or _fold(value) == text:
            raise AccessDenied(E_ACCESSDENIED, "submit",
                               f"subject {subject.rfc4514_string()!r} is granted {_held(g.roles)} by "
                               f"[[roles]] {g.principal!r} in certsrv.toml; {who} ({_held(roles)}) may not "
                               "request it: choose another subject, or ask an Officer")


def admit(cfg: Config, req: ParsedRequest, tmpl: Template, roles: frozenset[str], who: str,
          ca_cert: x509.Certificate | None) -> NamePlan:
    """Every check a new request passes before anything is written or signed, in order: the caller may use
    the template, a CA certificate has a subject, the subject is no role grant's, it is not the CA's own
    name, and every name obeys the name policy.

    :param cfg: the home's configuration (role grants).
    :param req: the parsed request.
    :param tmpl: the template chosen (by ``--template`` or the ``CertificateTemplate`` attribute alike).
    :param roles: the caller's roles.
    :param who: the caller, for messages.
    :param ca_cert: the CA certificate (None while a subordinate CA waits for its own).
    :returns: the names the certificate will carry.
    """
    check_enroll(tmpl, roles, who)
    if tmpl.ca and not req.subject:
        raise InvalidArgument(CERTSRV_E_BAD_REQUESTSUBJECT, "submit", "a CA certificate needs a subject name")
    check_role_subject(req.subject_name, cfg.roles, roles, who)
    if ca_cert is not None and req.subject_name == ca_cert.subject:
        # A certificate named like its issuer confuses path building (RFC 5280 §6.1: issuer name
        # chaining) and would be taken for the CA's own certificate.
        raise InvalidArgument(CERTSRV_E_BAD_REQUESTSUBJECT, "submit",
                              f"subject {req.subject!r} is this CA's own name; choose another subject")
    return check_names(req.subject_name, req.san, tmpl)


def local_roles(root: Path, cfg: Config) -> frozenset[str]:
    """The roles of this process on the home at ``root`` when no service stands between (direct use):
    as the service would grant this uid over its Unix socket (the owner: Administrator and Operator)."""
    from ..service.auth import RoleMap  # the service's role table; imported late: it pulls in aiohttp

    return RoleMap.for_home(root, cfg.roles).unix(os.geteuid(), os.getegid()).roles


__all__ = ["admit", "check_enroll", "check_role_subject", "local_roles"]
