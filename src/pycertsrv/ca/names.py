"""Name policy: every name a certificate would carry is checked before anything is signed.

- Subject: RFC 5280 Appendix A upper bounds per attribute, no control characters, at most one CN.
- SAN: dNSName is LDH (RFC 1034 §3.5, RFC 1123 §2.1, RFC 5280 §4.2.1.6) with at most a leftmost ``*.``
  wildcard (CA/B Forum BR §7.1.2.7.12 and RFC 6125 §6.4.3); iPAddress is a usable unicast address;
  rfc822Name and URI are well formed; other name forms are refused.
- Per template: allowed/forbidden DNS patterns, allowed IP networks, loopback, forbidden CN patterns, and
  what to do with a CN that is not also in the SAN (refuse, copy into the SAN, or allow).

A refusal is CERTSRV_E_BAD_REQUESTSUBJECT (CERTSRV_E_SUBJECT_DNS_REQUIRED when a server template gets no
host name) and names the offending name; nothing is stored.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import CERTSRV_E_BAD_REQUESTSUBJECT, CERTSRV_E_SUBJECT_DNS_REQUIRED, InvalidArgument
from .templates import Template

# RFC 5280 Appendix A (and X.520) upper bounds, in characters.
UPPER_BOUNDS: dict[x509.ObjectIdentifier, tuple[str, int]] = {
    NameOID.COMMON_NAME: ("CN", 64),
    NameOID.ORGANIZATION_NAME: ("O", 64),
    NameOID.ORGANIZATIONAL_UNIT_NAME: ("OU", 64),
    NameOID.LOCALITY_NAME: ("L", 128),
    NameOID.STATE_OR_PROVINCE_NAME: ("ST", 128),
    NameOID.SERIAL_NUMBER: ("serialNumber", 64),
    NameOID.EMAIL_ADDRESS: ("emailAddress", 255),
    NameOID.TITLE: ("title", 64),
    NameOID.PSEUDONYM: ("pseudonym", 128),
    NameOID.POSTAL_CODE: ("postalCode", 40),
    NameOID.GIVEN_NAME: ("givenName", 32768),
    NameOID.SURNAME: ("SN", 32768),
    NameOID.INITIALS: ("initials", 32768),
    NameOID.GENERATION_QUALIFIER: ("generationQualifier", 32768),
    NameOID.DOMAIN_COMPONENT: ("DC", 63),
    NameOID.STREET_ADDRESS: ("street", 128),
    NameOID.COUNTRY_NAME: ("C", 2),
}
_UNBOUNDED = ("", 32768)  # an attribute without an upper bound above: named by its OID in a refusal
MAX_SAN_ENTRIES = 100
MAX_URI = 2048
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I)
# A whole LDH host name (labels as _LABEL, ASCII only: no re.I, which lets [a-z] match a few non-ASCII letters).
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5321 §4.1.2 dot-atom local part (atext), ASCII only.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$", re.I)
# IPv4 0.0.0.0/8 is "this network" (RFC 1122 §3.2.1.3): never an address a certificate can name.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
FIX = "fix the request and submit it again"


def _show(value: str, limit: int = 64) -> str:
    """A name for a one-line message: quoted with control characters escaped, long ones cut."""
    if len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def _refuse(what: str, why: str, hresult: int = CERTSRV_E_BAD_REQUESTSUBJECT) -> InvalidArgument:
    return InvalidArgument(hresult, "submit", f"{what} {why}; {FIX}")


def dns_problem(name: str, *, wildcard: bool = True) -> str | None:
    """Why ``name`` is not a usable DNS name, or None (RFC 1034 §3.5 LDH, RFC 1123 §2.1, RFC 5280 §4.2.1.6).

    :param name: the name as requested.
    :param wildcard: a leftmost ``*.`` label is acceptable (SAN dNSName; not in URIs or e-mail domains).
    """
    if len(name) <= 253 and _HOST.fullmatch(name) and not name.rpartition(".")[2].isdigit():
        return None  # the common case at once: exactly the names the checks below accept without a wildcard
    if not name:
        return "is empty"
    if not name.isascii():
        return "is not ASCII: write an internationalised name as its IDNA A-label (xn--...)"
    if _CONTROL.search(name) or " " in name:
        return "contains spaces or control characters"
    if len(name) > 253:
        return f"is {len(name)} characters long; a DNS name has at most 253"
    if name.endswith("."):
        return "ends in '.' (write the name without the root dot)"
    labels = name.split(".")
    if name == "*":
        return "is a bare '*' (it would match every host)"
    if "*" in name:
        if not wildcard:
            return "has a wildcard, which is not allowed here"
        # Only a whole leftmost label may be '*' (RFC 6125 §6.4.3 / BR §7.1.2.7.12), once.
        if labels[0] != "*" or "*" in ".".join(labels[1:]):
            return "has a wildcard that is not the whole leftmost label (only '*.example.com' is allowed)"
        if len(labels) < 3:
            return "is a wildcard over a top-level domain (e.g. '*.com'); name a registered domain"
        labels = labels[1:]
    for label in labels:
        if not label:
            return "has an empty label ('..')"
        if len(label) > 63:
            return f"has a label of {len(label)} characters; at most 63"
        if "_" in label:
            return "contains '_', which is not allowed in a host name (letters, digits, '-' only)"
        if not _LABEL.match(label):
            return f"has the label {label!r}: letters, digits and inner '-' only"
    if labels[-1].isdigit():
        # RFC 3696 §2: a top-level domain is never all-numeric; this is an IP address written as a DNS name.
        return "looks like an IP address: put it in the SAN as an IP address"
    return None


def matches(name: str, pattern: str) -> bool:
    """``pattern`` ``*.d`` matches any name below ``d`` (any depth, wildcards included); otherwise exact.
    Case-insensitive (RFC 4343)."""
    name, pattern = name.lower(), pattern.lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def _is_loopback_name(name: str) -> bool:
    # RFC 6761 §6.3: localhost and every name below it resolve to loopback.
    n = name.lower()
    return n == "localhost" or n.endswith(".localhost")


def check_dns(name: str, tmpl: Template, what: str = "DNS name") -> None:
    """Refuse a SAN dNSName (or CN copied into one) that is malformed or outside the template's rules."""
    problem = dns_problem(name)
    if problem is None and _is_loopback_name(name) and not tmpl.allow_loopback:
        problem = f"names the local host; template {tmpl.name!r} does not allow loopback names"
    if problem is None and tmpl.allowed_dns and not any(matches(name, p) for p in tmpl.allowed_dns):
        problem = f"is outside the names template {tmpl.name!r} allows ({', '.join(tmpl.allowed_dns)})"
    if problem is None:
        for p in tmpl.forbidden_dns:
            if matches(name, p):
                problem = f"matches {p!r}, forbidden by template {tmpl.name!r}"
                break
    if problem is not None:  # the label only for a refusal (see check_subject)
        raise _refuse(f"{what} {_show(name)}", problem)


def ip_problem(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> str | None:
    """Why ``addr`` cannot be named in a certificate, or None."""
    if addr.is_unspecified:
        return "is unspecified ('this host'), not an address a peer connects to"
    if addr in _THIS_NETWORK:
        return "is in 0.0.0.0/8 ('this network', RFC 1122 §3.2.1.3), not an address a peer connects to"
    if addr == _BROADCAST:
        return "is the limited broadcast address"
    if addr.is_multicast:
        return "is a multicast address"
    if addr.is_link_local:
        return "is link-local (valid only on one link, ambiguous in a certificate)"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"is IPv4-mapped: write it as the IPv4 address {addr.ipv4_mapped}"
    if addr.is_loopback:
        return None if allow_loopback else "is a loopback address (the template does not allow loopback)"
    if addr.is_reserved:
        return "is in a reserved range"
    return None


def check_ip(value: object, tmpl: Template, what: str = "IP address") -> None:
    """Refuse an iPAddress entry that is not one usable unicast address within the template's networks."""
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise _refuse(f"{what} {value}", "is a network, not an address (RFC 5280 §4.2.1.6)")
    problem = ip_problem(value, tmpl.allow_loopback)
    if problem:
        raise _refuse(f"{what} {value}", problem)
    if tmpl.allowed_ip and not any(value in n for n in tmpl.allowed_ip):
        raise _refuse(f"{what} {value}", f"is outside the networks template {tmpl.name!r} allows "
                      f"({', '.join(str(n) for n in tmpl.allowed_ip)})")


def check_email(value: str, tmpl: Template) -> None:
    """Refuse an rfc822Name that is not ``local@domain`` (RFC 5280 §4.2.1.6, RFC 5321 §4.1.2 dot-atom)."""
    label = f"e-mail address {_show(value)}"
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise _refuse(label, "is not local-part@domain")
    if len(value) > 254:
        raise _refuse(label, f"is {len(value)} characters; at most 254 (RFC 5321 §4.5.3.1)")
    if len(local) > 64 or not _LOCAL_PART.match(local):
        raise _refuse(label, "has a local part that is not an ASCII dot-atom of at most 64 characters")
    problem = dns_problem(domain, wildcard=False)
    if problem:
        raise _refuse(label, f"has a domain that {problem}")


def check_uri(value: str, tmpl: Template) -> None:
    """Refuse a URI that has no scheme, holds spaces or control characters, or names a bad host
    (RFC 5280 §4.2.1.6: a URI names a host by a fully qualified domain name or an IP address)."""
    label = f"URI {_show(value)}"
    if len(value) > MAX_URI:
        raise _refuse(label, f"is longer than {MAX_URI} characters")
    if not value.isascii() or _CONTROL.search(value) or " " in value:
        raise _refuse(label, "contains spaces, control or non-ASCII characters (percent-encode them)")
    scheme, sep, rest = value.partition(":")
    if not sep or not _SCHEME.match(scheme) or not rest:
        raise _refuse(label, "has no scheme (RFC 3986 §3: e.g. https://host/path)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port
    except ValueError as e:
        raise _refuse(label, f"is malformed ({e})") from None
    if rest.startswith("//"):
        if not host:
            raise _refuse(label, "has an authority without a host")
        try:
            check_ip(ipaddress.ip_address(host), tmpl, "URI host")
        except ValueError:
            problem = dns_problem(host, wildcard=False)
            if problem:
                raise _refuse(label, f"has a host that {problem}") from None


@dataclass(frozen=True)
class NamePlan:
    """The names a certificate will carry once the policy accepted them.

    :param san: the subjectAltName to put in the certificate (the request's, maybe with the CN added).
    :param critical: the SAN's criticality (RFC 5280 §4.2.1.6: critical when the subject is empty).
    """

    san: x509.SubjectAlternativeName | None
    critical: bool


def check_subject(subject: x509.Name, tmpl: Template) -> list[str]:
    """Check every subject attribute; return the CN values (at most one)."""
    cns: list[str] = []
    for attr in subject:
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        oid = attr.oid
        short, limit = UPPER_BOUNDS.get(oid, _UNBOUNDED)
        problem = None
        if not value.strip():
            problem = "is empty"
        elif _CONTROL.search(value):
            problem = "contains control characters"
        elif len(value) > limit:
            problem = f"is {len(value)} characters; RFC 5280 Appendix A allows at most {limit}"
        elif oid == NameOID.COUNTRY_NAME and (len(value) != 2 or not value.isalpha() or not value.isupper()):
            problem = "is not a two-letter ISO 3166 country code (e.g. DE)"
        if problem is not None:  # the label only for a refusal: formatting it is most of an accepted name's cost
            raise _refuse(f"subject {short or oid.dotted_string}={_show(value)}", problem)
        if oid == NameOID.COMMON_NAME:
            cns.append(value)
    if len(cns) > 1:
        raise _refuse(f"subject {_show(subject.rfc4514_string(), 120)}",
                      "has more than one CN (relying parties disagree on which one counts)")
    for cn in cns:
        for p in tmpl.forbidden_cn:
            if fnmatch.fnmatchcase(cn.lower(), p):
                raise _refuse(f"subject CN={_show(cn)}", f"matches {p!r}, forbidden by template {tmpl.name!r}")
    return cns


def _cn_in_san(cn: str, names: list[x509.GeneralName]) -> bool:
    # The DNS comparison first: it is the common case, and an IP-looking CN can never equal a dNSName
    # (check_dns refused those already), so this answers what the IP parse first would, without paying for
    # ip_address()'s exception on every host name (measured: ~5 us per issuance).
    low = cn.lower()
    if any(isinstance(n, x509.DNSName) and n.value.lower() == low for n in names):
        return True
    try:
        ip = ipaddress.ip_address(cn)
    except ValueError:
        return False
    return any(isinstance(n, x509.IPAddress) and n.value == ip for n in names)


def check_names(subject: x509.Name, san: x509.Extension[x509.SubjectAlternativeName] | None,
                tmpl: Template) -> NamePlan:
    """Check the subject and SAN of a request against the name rules and the template.

    :param subject: the requested subject.
    :param san: the requested subjectAltName extension, if any.
    :param tmpl: the template being enrolled for.
    :returns: the SAN the certificate will carry.
    """
    cns = check_subject(subject, tmpl)
    names: list[x509.GeneralName] = list(san.value) if san is not None else []
    if san is not None and not names:
        raise _refuse("subjectAltName", "is empty (RFC 5280 §4.2.1.6: at least one name)")
    if len(names) > MAX_SAN_ENTRIES:
        raise _refuse("subjectAltName", f"has {len(names)} names; at most {MAX_SAN_ENTRIES}")
    for n in names:
        if isinstance(n, x509.DNSName):
            check_dns(n.value, tmpl)
        elif isinstance(n, x509.IPAddress):
            check_ip(n.value, tmpl)
        elif isinstance(n, x509.RFC822Name):
            check_email(n.value, tmpl)
        elif isinstance(n, x509.UniformResourceIdentifier):
            check_uri(n.value, tmpl)
        else:
            # otherName (e.g. a Windows UPN for smart-card logon), directoryName, registeredID: a
            # standalone CA does not verify them, so it does not vouch for them.
            raise _refuse(f"subjectAltName {type(n).__name__}", "is not accepted (only DNS, IP, e-mail, URI)")
    added = False
    if cns and tmpl.cn_not_in_san != "allow" and not _cn_in_san(cns[0], names):
        cn = cns[0]
        if tmpl.cn_not_in_san == "refuse":
            raise _refuse(f"subject CN={_show(cn)}", f"is not in the subjectAltName; template {tmpl.name!r} "
                          "wants every CN listed there too")
        # "copy": the CN names the host, so it must be a DNS name or an IP address (RFC 6125 §6.4.4).
        try:
            ip = ipaddress.ip_address(cn)
        except ValueError:
            check_dns(cn, tmpl, f"subject CN (copied into the SAN by template {tmpl.name!r})")
            names.append(x509.DNSName(cn))
        else:
            check_ip(ip, tmpl, f"subject CN (copied into the SAN by template {tmpl.name!r})")
            names.append(x509.IPAddress(ip))
        added = True
    if tmpl.san_required and not any(isinstance(n, x509.DNSName | x509.IPAddress) for n in names):
        raise _refuse("request", f"names no host: template {tmpl.name!r} needs a DNS name or IP address in "
                      "the subjectAltName (or in the CN)", CERTSRV_E_SUBJECT_DNS_REQUIRED)
    if not names:
        return NamePlan(None, False)
    if not added and san is not None:
        return NamePlan(san.value, san.critical or len(subject) == 0)
    return NamePlan(x509.SubjectAlternativeName(names), len(subject) == 0)


__all__ = ["UPPER_BOUNDS", "NamePlan", "check_dns", "check_ip", "check_names", "dns_problem", "matches"]
