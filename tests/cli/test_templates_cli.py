"""``certsrv templates`` as a real command: the listing follows certsrv.toml (re-read after each edit), and a
bad template configuration is ONE line at every entry point (templates, submit, serve), losing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CERTSRV = str(Path(sys.executable).with_name("certsrv"))


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CERTSRV_HOME", "CERTSRV_KEY_PASSPHRASE")}
    return subprocess.run([CERTSRV, *args, "--home", str(home)], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    h = tmp_path / "H"
    assert run(h, "init", "--name", "Templates CA").returncode == 0
    return h


def listing(home: Path) -> dict[str, dict[str, object]]:
    p = run(home, "templates", "--json")
    assert p.returncode == 0, p.stderr
    return {t["name"]: t for t in json.loads(p.stdout)}


def test_builtin_templates_listed_from_the_written_config(home: Path) -> None:
    toml = (home / "certsrv.toml").read_text()
    # init writes the five built-ins into certsrv.toml, where an operator sees and edits them.
    for name in ("server", "client", "server-client", "user", "subordinate"):
        assert f"[templates.{name}]" in toml
    t = listing(home)
    assert list(t) == ["server", "client", "server-client", "user", "subordinate"]
    assert t["server"]["max_validity_days"] == 200 and t["server"]["validity_days"] == 200
    assert t["server"]["cn_not_in_san"] == "copy" and t["server"]["san_required"] is True
    assert t["server"]["eku"] == ["serverAuth"]
    assert t["server"]["enroll_roles"] == ["Administrator", "Enrollee", "Officer"]
    assert t["subordinate"]["enroll_roles"] == ["Administrator", "Officer"]
    assert t["subordinate"]["issue"] == "pending" and t["subordinate"]["ca"] is True
    text = run(home, "templates").stdout
    assert "subordinate: subordinate CA (pathLen 0) (CA, pathLen 0)" in text
    assert "  enroll: Administrator, Officer; issue: pending; validity: 365 days (template max 1825)" in text
    assert "  names: SAN required; CN not in SAN: copy; allowed DNS: any; IP: any usable; no loopback" in text


def test_listing_follows_edits(home: Path, tmp_path: Path) -> None:
    cfg = home / "certsrv.toml"
    cfg.write_text(cfg.read_text() + "\n".join([
        "", "[templates.web]", 'description = "corp web"', 'eku = ["serverAuth"]', "max_validity_days = 90",
        'issue = "pending"', 'allowed_dns = ["*.corp.example"]', 'forbidden_cn = ["ops*"]',
        'certificate_policies = ["2.23.140.1.2.1"]', 'enroll_roles = ["Officer"]', "",
    ]))
    # A table for a built-in changes only the keys it sets (tomllib refuses a second [templates.server],
    # so the edit goes into the existing table).
    text = cfg.read_text().replace("[templates.user]\nenabled = true", "[templates.user]\nenabled = false")
    cfg.write_text(text.replace("max_validity_days = 200", "max_validity_days = 30", 1))
    t = listing(home)
    assert "user" not in t and "web" in t
    assert t["server"]["max_validity_days"] == 30 and t["server"]["eku"] == ["serverAuth"]
    assert t["web"] == {**t["web"], "issue": "pending", "enroll_roles": ["Officer"], "max_validity_days": 90,
                        "allowed_dns": ["*.corp.example"], "forbidden_cn": ["ops*"],
                        "certificate_policies": ["2.23.140.1.2.1"], "validity_days": 90}
    # The disabled template cannot be used; the owner is not an Officer's template's enrollee either.
    req = tmp_path / "r.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "r.key"), "-subj", "/CN=a.corp.example", "-out", str(req)],
                   check=True, capture_output=True, timeout=60)
    p = run(home, "submit", str(req), "--template", "user")
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "0x80094800 CERTSRV_E_UNSUPPORTED_CERT_TYPE: unknown certificate template 'user'" in p.stderr
    p = run(home, "submit", str(req), "--template", "web")
    assert p.returncode == 1 and "0x80094012 CERTSRV_E_TEMPLATE_DENIED" in p.stderr
    assert "(Administrator, Operator) may not enroll with template 'web'" in p.stderr


BAD_CONFIGS = {
    "ca-auto": ('[templates.rogue]\nca = true\nkey_usage = ["keyCertSign"]\nissue = "auto"\n',
                "templates.rogue: a CA template never issues at once"),
    "ca-enrollee": ('[templates.rogue]\nca = true\nkey_usage = ["keyCertSign"]\nenroll_roles = ["Enrollee"]\n',
                    "templates.rogue: a CA template may be requested only by Officer or Administrator"),
    "eku": ('[templates.x]\neku = ["bogusAuth"]\n', "templates.x.eku: unknown extended key usage 'bogusAuth'"),
    "dns-pattern": ('[templates.x]\nallowed_dns = ["bad domain"]\n', "'bad domain' is not a DNS name"),
    "ip-network": ('[templates.x]\nallowed_ip = ["10.0.0.1/8"]\n', "allowed_ip '10.0.0.1/8' is not a network"),
    "ku-not-ca": ('[templates.x]\nkey_usage = ["keyCertSign"]\n', "keyCertSign and cRLSign need ca = true"),
    "validity": ("[templates.x]\nmax_validity_days = 0\n", "templates.x.max_validity_days: Input should be"),
    "name": ('[templates."Bad Name"]\n', "template name 'Bad Name'"),
    "default-disabled": ("[templates.x]\nenabled = false\n", "policy.default_template 'x' is not an enabled template"),
    "cn-mode": ('[templates.x]\ncn_not_in_san = "maybe"\n', "templates.x.cn_not_in_san: Input should be"),
    "unknown-key": ("[templates.x]\nsurprise = 1\n", "templates.x.surprise: Extra inputs are not permitted"),
    "policy-oid": ('[templates.x]\ncertificate_policies = ["dv"]\n', "certificate policy 'dv' is not a dotted OID"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_template_config_is_one_line(home: Path, case: str) -> None:
    text, says = BAD_CONFIGS[case]
    cfg = home / "certsrv.toml"
    body = cfg.read_text() + "\n" + text
    if case == "default-disabled":
        body = body.replace('default_template = "server"', 'default_template = "x"', 1)
    cfg.write_text(body)
    db_before = {p.name: p.read_bytes() for p in (home / "db").iterdir() if p.is_file()}
    # Every entry point reads the same validated configuration; serve is tried on two cases (it is slower).
    verbs = [["templates"], ["view"], *([["serve"]] if case in ("ca-auto", "default-disabled") else [])]
    for verb in verbs:
        p = run(home, *verb)
        assert p.returncode == 1, (verb, p.stdout, p.stderr)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith(f"certsrv: {cfg}: 0x80070057 E_INVALIDARG: "), p.stderr
        assert says in p.stderr, p.stderr
    assert {p.name: p.read_bytes() for p in (home / "db").iterdir() if p.is_file()} == db_before
