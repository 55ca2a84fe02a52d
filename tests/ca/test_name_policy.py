"""The name policy and template rights as a table (issue 9, finding 2 and the rights of finding 1).

Every bad name or request is refused with its HRESULT, names the offending name in one line, and leaves
the database exactly as it was (re-read from SQLite). Every certificate a good row gets is checked with
``openssl verify -x509_strict`` against the CA and its SAN read back with openssl.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv import config as config_mod
from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.config import RoleGrant, TemplateSection

# cryptography warns when it parses an over-long attribute; the name policy refuses it (what is under test).
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
BAD_SUBJECT = E.CERTSRV_E_BAD_REQUESTSUBJECT
ENROLLEE = frozenset({"Enrollee"})
ADMIN = frozenset({"Administrator", "Operator"})
_KEY = ec.generate_private_key(ec.SECP256R1())
UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")

# A template with every per-template rule set, beside the built-in five.
WEB = TemplateSection(description="corp web servers", eku=["serverAuth"], max_validity_days=90,
                      cn_not_in_san="refuse", san_required=True, allowed_dns=["*.corp.example"],
                      forbidden_dns=["admin.corp.example"], allowed_ip=["10.0.0.0/8"], forbidden_cn=["ops*"])
LOCAL = TemplateSection(description="loopback allowed", eku=["serverAuth"], max_validity_days=30,
                        cn_not_in_san="copy", san_required=True, allow_loopback=True)


def name(*attrs: tuple[x509.ObjectIdentifier, str]) -> list[x509.NameAttribute]:
    # _validate=False: cryptography itself refuses some over-long values; a hostile requester does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [x509.NameAttribute(oid, v, _validate=False) for oid, v in attrs]


def cn(value: str) -> list[x509.NameAttribute]:
    return name((NameOID.COMMON_NAME, value))


def csr(subject: list[x509.NameAttribute], sans: list[x509.GeneralName] | None) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.PEM)


def D(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


def IP(*addrs: str) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]


@dataclass
class Bad:
    subject: list[x509.NameAttribute]
    sans: list[x509.GeneralName] | None
    hresult: int
    says: str  # the offending name (or the reason) as the message shows it
    template: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    roles: frozenset[str] = ENROLLEE
    error: type[E.CertSrvError] = E.InvalidArgument


H = "host.example.com"
BAD: dict[str, Bad] = {
    # --- DNS names (RFC 1034/1123 LDH, RFC 5280 §4.2.1.6, wildcards per RFC 6125 §6.4.3) ---
    "dns-space-bang": Bad(cn(H), D(H, "bad domain!"), BAD_SUBJECT, "'bad domain!'"),
    "dns-double-wildcard": Bad(cn(H), D("*.*.google.com"), BAD_SUBJECT, "'*.*.google.com'"),
    "dns-bare-star": Bad(cn(H), D(H, "*"), BAD_SUBJECT, "bare '*'"),
    "dns-wildcard-tld": Bad(cn(H), D(H, "*.com"), BAD_SUBJECT, "'*.com'"),
    "dns-partial-wildcard": Bad(cn(H), D(H, "w*.example.com"), BAD_SUBJECT, "'w*.example.com'"),
    "dns-inner-wildcard": Bad(cn(H), D(H, "foo.*.example.com"), BAD_SUBJECT, "'foo.*.example.com'"),
    "dns-underscore": Bad(cn(H), D(H, "under_score.example.com"), BAD_SUBJECT, "'_'"),
    "dns-leading-hyphen": Bad(cn(H), D(H, "-lead.example.com"), BAD_SUBJECT, "'-lead'"),
    "dns-trailing-hyphen": Bad(cn(H), D(H, "trail-.example.com"), BAD_SUBJECT, "'trail-'"),
    "dns-label-64": Bad(cn(H), D(H, "a" * 64 + ".example.com"), BAD_SUBJECT, "label of 64 characters"),
    "dns-total-256": Bad(cn(H), D(H, ("a" * 63 + ".") * 4 + "com"), BAD_SUBJECT, "at most 253"),
    "dns-empty-label": Bad(cn(H), D(H, "double..dot.example.com"), BAD_SUBJECT, "empty label"),
    "dns-trailing-dot": Bad(cn(H), D(H, "trailing.example.com."), BAD_SUBJECT, "ends in '.'"),
    "dns-numeric-tld": Bad(cn(H), D(H, "1.2.3.4"), BAD_SUBJECT, "'1.2.3.4'"),
    "dns-localhost": Bad(cn(H), D(H, "localhost"), BAD_SUBJECT, "'localhost'"),
    "dns-under-localhost": Bad(cn(H), D(H, "app.localhost"), BAD_SUBJECT, "'app.localhost'"),
    "dns-tab": Bad(cn(H), D(H, "tab\there.example.com"), BAD_SUBJECT, "'tab\\there.example.com'"),
    "dns-cn-copy-not-a-host": Bad(cn("Alice Smith"), None, BAD_SUBJECT,
                                  "copied into the SAN by template 'server') 'Alice Smith'"),
    # --- IP addresses: usable unicast only ---
    "ip-unspecified-v4": Bad(cn(H), D(H) + IP("0.0.0.0"), BAD_SUBJECT, "0.0.0.0"),
    "ip-this-network": Bad(cn(H), D(H) + IP("0.1.2.3"), BAD_SUBJECT, "0.1.2.3"),
    "ip-unspecified-v6": Bad(cn(H), D(H) + IP("::"), BAD_SUBJECT, "IP address ::"),
    "ip-broadcast": Bad(cn(H), D(H) + IP("255.255.255.255"), BAD_SUBJECT, "255.255.255.255"),
    "ip-multicast-v4": Bad(cn(H), D(H) + IP("224.0.0.1"), BAD_SUBJECT, "224.0.0.1"),
    "ip-multicast-v6": Bad(cn(H), D(H) + IP("ff02::1"), BAD_SUBJECT, "ff02::1"),
    "ip-link-local-v4": Bad(cn(H), D(H) + IP("169.254.1.1"), BAD_SUBJECT, "169.254.1.1"),
    "ip-link-local-v6": Bad(cn(H), D(H) + IP("fe80::1"), BAD_SUBJECT, "fe80::1"),
    "ip-loopback-v4": Bad(cn(H), D(H) + IP("127.0.0.1"), BAD_SUBJECT, "127.0.0.1"),
    "ip-loopback-v6": Bad(cn(H), D(H) + IP("::1"), BAD_SUBJECT, "::1 is a loopback"),
    "ip-v4-mapped": Bad(cn(H), D(H) + IP("::ffff:10.0.0.1"), BAD_SUBJECT, "10.0.0.1"),
    "ip-reserved": Bad(cn(H), D(H) + IP("240.0.0.1"), BAD_SUBJECT, "240.0.0.1"),
    "ip-network": Bad(cn(H), [*D(H), x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], BAD_SUBJECT,
                      "10.0.0.0/8"),
    "ip-cn-copied-unspecified": Bad(cn("0.0.0.0"), None, BAD_SUBJECT, "template 'server') 0.0.0.0"),
    # --- subject attributes: RFC 5280 Appendix A upper bounds, one CN, no control characters ---
    "cn-1000": Bad(cn("x" * 1000), None, BAD_SUBJECT, "(1000 characters)", template="client"),
    "cn-65": Bad(cn("y" * 65), None, BAD_SUBJECT, "at most 64", template="client"),
    "o-65": Bad(name((NameOID.COMMON_NAME, H), (NameOID.ORGANIZATION_NAME, "o" * 65)), None, BAD_SUBJECT,
                "subject O="),
    "ou-65": Bad(name((NameOID.COMMON_NAME, H), (NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 65)), None,
                 BAD_SUBJECT, "subject OU="),
    "l-129": Bad(name((NameOID.COMMON_NAME, H), (NameOID.LOCALITY_NAME, "l" * 129)), None, BAD_SUBJECT,
                 "at most 128"),
    "st-129": Bad(name((NameOID.COMMON_NAME, H), (NameOID.STATE_OR_PROVINCE_NAME, "s" * 129)), None,
                  BAD_SUBJECT, "subject ST="),
    "serial-65": Bad(name((NameOID.COMMON_NAME, H), (NameOID.SERIAL_NUMBER, "9" * 65)), None, BAD_SUBJECT,
                     "subject serialNumber="),
    "email-attr-256": Bad(name((NameOID.COMMON_NAME, H), (NameOID.EMAIL_ADDRESS, "e" * 250 + "@x.org")), None,
                          BAD_SUBJECT, "at most 255"),
    "country-3": Bad(name((NameOID.COMMON_NAME, H), (NameOID.COUNTRY_NAME, "USA")), None, BAD_SUBJECT,
                     "subject C='USA'"),
    "two-cns": Bad(name((NameOID.COMMON_NAME, H), (NameOID.COMMON_NAME, "other.example.com")), D(H), BAD_SUBJECT,
                   "more than one CN"),
    "cn-nul": Bad(cn("www.paypal.com\x00.evil.com"), D("www.paypal.com"), BAD_SUBJECT, "control characters"),
    "cn-empty": Bad(cn(""), D(H), BAD_SUBJECT, "subject CN='' is empty"),
    # --- e-mail and URI SANs (RFC 5280 §4.2.1.6) ---
    "email-no-at": Bad(cn("Alice"), [x509.RFC822Name("no-at-sign")], BAD_SUBJECT, "'no-at-sign'", template="user"),
    "email-space": Bad(cn("Alice"), [x509.RFC822Name("a b@example.com")], BAD_SUBJECT, "'a b@example.com'",
                       template="user"),
    "email-bad-domain": Bad(cn("Alice"), [x509.RFC822Name("alice@bad_domain.com")], BAD_SUBJECT,
                            "'alice@bad_domain.com'", template="user"),
    "email-wildcard": Bad(cn("Alice"), [x509.RFC822Name("alice@*.example.com")], BAD_SUBJECT, "wildcard",
                          template="user"),
    "uri-no-scheme": Bad(cn("Alice"), [x509.UniformResourceIdentifier("no-scheme-here")], BAD_SUBJECT,
                         "'no-scheme-here'", template="user"),
    "uri-space": Bad(cn("Alice"), [x509.UniformResourceIdentifier("https://bad host/")], BAD_SUBJECT,
                     "'https://bad host/'", template="user"),
    "uri-wildcard-host": Bad(cn("Alice"), [x509.UniformResourceIdentifier("https://*.example.com/")], BAD_SUBJECT,
                             "'https://*.example.com/'", template="user"),
    "uri-unspecified-host": Bad(cn("Alice"), [x509.UniformResourceIdentifier("https://0.0.0.0/")], BAD_SUBJECT,
                                "0.0.0.0", template="user"),
    # --- name forms a standalone CA does not vouch for ---
    "san-upn": Bad(cn("Alice"), [x509.OtherName(UPN, b"\x0c\x0dadmin@corp.ad")], BAD_SUBJECT, "OtherName",
                   template="user"),
    "san-dirname": Bad(cn("Alice"), [x509.DirectoryName(x509.Name(cn("ops")))], BAD_SUBJECT, "DirectoryName",
                       template="user"),
    "san-rid": Bad(cn("Alice"), [x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))], BAD_SUBJECT, "RegisteredID",
                   template="user"),
    "san-empty": Bad(cn(H), [], BAD_SUBJECT, "subjectAltName is empty"),
    "san-101": Bad(cn(H), D(*[f"h{i}.example.com" for i in range(101)]), BAD_SUBJECT, "101 names"),
    "cn-is-the-ca": Bad(cn("Policy Test CA"), None, BAD_SUBJECT, "this CA's own name", template="client"),
    "san-no-host": Bad([], [x509.RFC822Name("a@example.com")], E.CERTSRV_E_SUBJECT_DNS_REQUIRED, "names no host"),
    # --- per-template rules (template "web") ---
    "web-cn-not-in-san": Bad(cn("a.corp.example"), D("b.corp.example"), BAD_SUBJECT, "CN='a.corp.example'",
                             template="web"),
    "web-outside-allowed": Bad(cn("evil.example.com"), D("evil.example.com"), BAD_SUBJECT, "'evil.example.com'",
                               template="web"),
    "web-bare-domain": Bad(cn("corp.example"), D("corp.example"), BAD_SUBJECT, "outside", template="web"),
    "web-forbidden": Bad(cn("admin.corp.example"), D("admin.corp.example"), BAD_SUBJECT, "'admin.corp.example'",
                         template="web"),
    "web-ip-outside": Bad(cn("a.corp.example"), D("a.corp.example") + IP("192.168.1.1"), BAD_SUBJECT,
                          "192.168.1.1", template="web"),
    "web-forbidden-cn": Bad(cn("ops-backup.corp.example"), D("ops-backup.corp.example"), BAD_SUBJECT,
                            "'ops*'", template="web"),
    # --- rights: template roles, CA templates, role-grant subjects (issue 9 finding 1) ---
    "enrollee-subordinate": Bad(cn("Mallory CA"), None, E.CERTSRV_E_TEMPLATE_DENIED, "CA template 'subordinate'",
                                template="subordinate", error=E.AccessDenied),
    "enrollee-subordinate-attr": Bad(cn("Mallory CA"), None, E.CERTSRV_E_TEMPLATE_DENIED, "'subordinate'",
                                     attributes={"CertificateTemplate": "subordinate"}, error=E.AccessDenied),
    "enrollee-subordinate-attr-case": Bad(cn("Mallory CA"), None, E.CERTSRV_E_TEMPLATE_DENIED, "'subordinate'",
                                          attributes={"CertificateTemplate": " SubOrdinate "}, error=E.AccessDenied),
    "auditor-server": Bad(cn(H), D(H), E.CERTSRV_E_TEMPLATE_DENIED, "(Auditor)", roles=frozenset({"Auditor"}),
                          error=E.AccessDenied),
    "no-role-client": Bad(cn("Alice"), None, E.CERTSRV_E_TEMPLATE_DENIED, "(no role)", template="client",
                          roles=frozenset(), error=E.AccessDenied),
    "enrollee-cn-ops": Bad(cn("ops"), None, E.E_ACCESSDENIED, "'CN=ops' is granted Operator", template="client",
                           error=E.AccessDenied),
    "enrollee-cn-ops-case": Bad(cn("OPS"), None, E.E_ACCESSDENIED, "'CN=OPS' is granted Operator",
                                template="client", error=E.AccessDenied),
    "enrollee-cn-ops-user": Bad(cn("ops"), [x509.RFC822Name("ops@example.com")], E.E_ACCESSDENIED, "granted",
                                template="user", error=E.AccessDenied),
}


def _setup(root: Path, key: Any) -> Authority:
    """A CA with the built-ins plus "web" and "local", and a ``cert-subject:CN=ops`` Operator grant."""
    Authority.init(root, "Policy Test CA", key=key).close()
    cfg = config_mod.load(root)
    cfg = cfg.model_copy(update={"templates": {**cfg.templates, "web": WEB, "local": LOCAL},
                                 "roles": [RoleGrant(principal="cert-subject:CN=ops", roles=["Operator"])]})
    config_mod.save(root, cfg)
    return Authority.open(root)


@pytest.fixture(scope="module")
def policy_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    a = _setup(tmp_path_factory.mktemp("policy") / "H", ec.generate_private_key(ec.SECP256R1()))
    yield a
    a.close()


def test_table_is_big_enough() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_name_or_request_refused(policy_ca: Authority, case: str, snapshot: Callable[[Authority], Any]) -> None:
    bad = BAD[case]
    db_state = snapshot
    before = db_state(policy_ca)
    with pytest.raises(bad.error) as ei:
        policy_ca.submit(csr(bad.subject, bad.sans), requester="uid:4242", template=bad.template,
                         attributes=bad.attributes, roles=bad.roles)
    err = ei.value
    assert (err.hresult, err.function) == (bad.hresult, "submit"), str(err)
    text = str(err)
    assert bad.says in text, text
    assert "\n" not in text and text.startswith(f"submit: 0x{bad.hresult:08X} {E.hresult_name(bad.hresult)}: ")
    assert db_state(policy_ca) == before  # nothing written, not even a denied row


@dataclass
class Good:
    subject: list[x509.NameAttribute]
    sans: list[x509.GeneralName] | None
    template: str | None
    expect_san: list[str]  # openssl's rendering of the SAN the certificate carries
    roles: frozenset[str] = ENROLLEE


GOOD: dict[str, Good] = {
    "server-cn-copied": Good(cn("www.example.com"), None, None, ["DNS:www.example.com"]),
    "server-wildcard": Good(cn("*.example.com"), D("*.example.com"), "server", ["DNS:*.example.com"]),
    "server-ip": Good(cn("192.0.2.10"), None, "server", ["IP Address:192.0.2.10"]),
    "server-v6": Good(cn(H), D(H) + IP("2001:db8::1"), "server",
                      ["DNS:host.example.com", "IP Address:2001:DB8:0:0:0:0:0:1"]),
    "server-cn-added": Good(cn("a.example.com"), D("b.example.com"), "server-client",
                            ["DNS:b.example.com", "DNS:a.example.com"]),
    "server-single-label": Good(cn("intranet"), None, "server", ["DNS:intranet"]),
    "server-max-lengths": Good(name((NameOID.COMMON_NAME, "c" * 52 + ".example.com"),
                                    (NameOID.ORGANIZATION_NAME, "o" * 64), (NameOID.LOCALITY_NAME, "l" * 128),
                                    (NameOID.COUNTRY_NAME, "DE")), None, "server",
                               ["DNS:" + "c" * 52 + ".example.com"]),
    "client-person": Good(cn("Alice Smith"), None, "client", []),
    "user-email-uri": Good(cn("Alice"), [x509.RFC822Name("alice@example.com"),
                                         x509.UniformResourceIdentifier("https://example.com/alice")], "user",
                           ["email:alice@example.com", "URI:https://example.com/alice"]),
    "web-allowed": Good(cn("app.corp.example"), D("app.corp.example") + IP("10.1.2.3"), "web",
                        ["DNS:app.corp.example", "IP Address:10.1.2.3"]),
    "local-loopback": Good(cn("localhost"), IP("127.0.0.1"), "local", ["IP Address:127.0.0.1", "DNS:localhost"]),
    "admin-cn-ops": Good(cn("ops"), None, "client", [], roles=ADMIN),
}


def _san_text(openssl: Callable[..., Any], pem_path: Path) -> list[str]:
    out = openssl("x509", "-in", str(pem_path), "-noout", "-ext", "subjectAltName").stdout
    lines = [ln.strip() for ln in out.splitlines()[1:] if ln.strip()]
    return [p.strip() for p in ", ".join(lines).split(",") if p.strip()]


@pytest.mark.parametrize("case", list(GOOD), ids=list(GOOD))
def test_good_names_issue_and_verify(policy_ca: Authority, case: str, tmp_path: Path,
                                    run_openssl: Callable[..., Any]) -> None:
    openssl = run_openssl
    good = GOOD[case]
    info = policy_ca.submit(csr(good.subject, good.sans), requester="uid:4242", template=good.template,
                            roles=good.roles)
    assert info.disposition_name == "issued", info
    pem = tmp_path / "cert.pem"
    pem.write_bytes(x509.load_der_x509_certificate(policy_ca.get_certificate(info.request_id))  # re-read
                    .public_bytes(Encoding.PEM))
    res = openssl("verify", "-x509_strict", "-CAfile", str(policy_ca.certificate_path), str(pem), check=False)
    assert res.returncode == 0 and res.stdout.strip().endswith(": OK"), res.stdout + res.stderr
    assert _san_text(openssl, pem) == good.expect_san


def test_subordinate_by_administrator_waits_then_verifies(policy_ca: Authority, tmp_path: Path,
                                                         run_openssl: Callable[..., Any]) -> None:
    """A CA template is pending even for an Administrator; once an Officer issues it, the chain verifies."""
    openssl = run_openssl
    sub_key = ec.generate_private_key(ec.SECP256R1())
    req = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name(cn("Good Sub CA")))
           .sign(sub_key, hashes.SHA256()).public_bytes(Encoding.PEM))
    info = policy_ca.submit(req, template="subordinate", roles=ADMIN)
    assert info.disposition_name == "pending" and policy_ca.get_request(info.request_id).serial is None
    issued = policy_ca.issue(info.request_id, by="officer")
    pem = tmp_path / "sub.pem"
    pem.write_text(issued.certificate_pem or "")
    res = openssl("verify", "-x509_strict", "-CAfile", str(policy_ca.certificate_path), str(pem), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "CA:TRUE, pathlen:0" in openssl("x509", "-in", str(pem), "-noout", "-text").stdout


def test_ca_template_pending_even_if_policy_issues(new_ca: Callable[..., Authority]) -> None:
    """``issue = "auto"`` on a CA template is refused when the configuration is read (one line)."""
    a = new_ca()
    root = a.home.root
    a.close()
    text = (root / "certsrv.toml").read_text() + '\n[templates.rogue]\nca = true\nkey_usage = ["keyCertSign"]\n' \
        'issue = "auto"\n'
    (root / "certsrv.toml").write_text(text)
    with pytest.raises(E.InvalidArgument) as ei:
        Authority.open(root)
    assert "templates.rogue: a CA template never issues at once" in str(ei.value) and "\n" not in str(ei.value)


def test_direct_caller_has_the_roles_of_its_uid(tmp_path: Path) -> None:
    """Without a service, the caller's roles are its uid's on the home, as RoleMap.unix grants them over the
    socket: the owner (the only uid that may open a home directly) is Administrator and Operator, plus its
    [[roles]] grants; so a CA template still only goes pending."""
    root = tmp_path / "H"
    Authority.init(root, "Direct CA").close()
    req = csr(cn("Direct Sub CA"), None)
    with Authority.open(root) as a:
        assert a.caller_roles() == ADMIN
        assert a.submit(req, template="subordinate").disposition_name == "pending"
    cfg = config_mod.load(root)
    grant = RoleGrant(principal=f"uid:{os.geteuid()}", roles=["Auditor"])
    config_mod.save(root, cfg.model_copy(update={"roles": [grant]}))
    with Authority.open(root) as a:
        assert a.caller_roles() == ADMIN | {"Auditor"}
        assert [r.disposition_name for r in a.view()] == ["pending"]


def test_ca_template_rules_hold_even_past_validation(policy_ca: Authority,
                                                     snapshot: Callable[[Authority], Any]) -> None:
    """The configuration refuses a CA template that issues at once or admits an Enrollee; if one is built
    anyway (bypassing validation), the runtime still pends it and still refuses the Enrollee."""
    from pycertsrv.ca.rights import check_enroll
    from pycertsrv.ca.templates import from_section

    rogue = from_section("rogue", TemplateSection.model_construct(
        ca=True, issue="auto", enroll_roles=["Enrollee", "Officer"], key_usage=["keyCertSign"], cn_not_in_san="allow"))
    assert rogue.issue == "auto" and "Enrollee" in rogue.enroll_roles  # what the (unchecked) table said
    assert rogue.waits_for_officer(policy_ca.config.policy)
    assert rogue.may_enroll == frozenset({"Officer"})
    with pytest.raises(E.AccessDenied) as ei:
        check_enroll(rogue, ENROLLEE, "uid:4242")
    assert ei.value.hresult == E.CERTSRV_E_TEMPLATE_DENIED
    # Through submit, with the rogue template among the CA's: pending for the Officer, refused for the Enrollee.
    policy_ca.templates["rogue"] = rogue
    try:
        before = snapshot(policy_ca)
        req = csr(cn("Rogue Sub CA"), None)
        with pytest.raises(E.AccessDenied):
            policy_ca.submit(req, template="rogue", roles=ENROLLEE)
        assert snapshot(policy_ca) == before
        assert policy_ca.submit(req, template="rogue", roles=frozenset({"Officer"})).disposition_name == "pending"
    finally:
        del policy_ca.templates["rogue"]
