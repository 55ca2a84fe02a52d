"""The CA verbs run as the real ``certsrv`` command in subprocesses, with requests made by ``openssl req``;
results are checked with openssl and by re-reading the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pycertsrv.ca import Authority
from pycertsrv.store import TABLES

CERTSRV = str(Path(sys.executable).with_name("certsrv"))


def run(home: Path, *args: str, ok: bool = True, env: dict[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("CERTSRV_HOME", "CERTSRV_KEY_PASSPHRASE")}
    e.update(env or {})
    p = subprocess.run([CERTSRV, *args, "--home", str(home)], capture_output=True, env=e, timeout=120,
                       input=stdin)
    out = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                      p.stderr.decode(errors="replace"))
    if ok:
        assert p.returncode == 0, out.stderr
    else:
        assert p.returncode == 1, out
    return out


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check, timeout=60)


def make_req(tmp: Path, cn: str, key: str = "ec", der: bool = False) -> Path:
    out = tmp / f"{cn}.{'der' if der else 'csr'}"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec" else ["-newkey", "rsa:2048"]
    openssl("req", "-new", *newkey, "-nodes", "-keyout", str(tmp / f"{cn}.key"), "-subj", f"/CN={cn}",
            "-addext", f"subjectAltName=DNS:{cn}", "-outform", "DER" if der else "PEM", "-out", str(out))
    return out


def state(home: Path, **kw: Any) -> tuple[int, dict[str, int]]:
    with Authority.open(home, **kw) as a:
        return a.store.applied_lsn, {t: a.store.count(t) for t in TABLES}


def test_cli_issue_revoke_publish(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run(home, "init", "--name", "CLI Test CA", "--key-type", "ec-p256", "--days", "400")
    assert "CLI Test CA" in out.stdout and "ec-p256" in out.stdout
    ca_pem = home / "publish" / "ca.crt"
    leaf = tmp_path / "leaf.pem"
    out = run(home, "submit", str(make_req(tmp_path, "pem.example.com")), "--out", str(leaf))
    assert out.stdout.startswith("request 1: issued, serial ")
    assert openssl("verify", "-CAfile", str(ca_pem), str(leaf)).stdout.strip() == f"{leaf}: OK"
    der_req = make_req(tmp_path, "der.example.com", key="rsa", der=True)
    info = json.loads(run(home, "submit", "-", "--json", "--template", "client", stdin=der_req.read_bytes()).stdout)
    assert info["request_id"] == 2 and info["disposition_name"] == "issued" and info["template"] == "client"
    rows = json.loads(run(home, "view", "--json").stdout)
    assert [r["request_id"] for r in rows] == [1, 2]
    serial = rows[1]["serial"]
    by_id = run(home, "get", "2").stdout
    by_serial = run(home, "get", ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()).stdout
    assert by_id == by_serial == info["certificate_pem"]
    run(home, "get", "1", "--der", "--out", str(tmp_path / "one.der"))
    text = openssl("x509", "-inform", "DER", "-in", str(tmp_path / "one.der"), "-noout", "-text").stdout
    assert "DNS:pem.example.com" in text and "TLS Web Server Authentication" in text
    out = run(home, "revoke", serial, "--reason", "key-compromise", "--invalidity-date", "2025-02-03T04:05:06Z")
    assert "revoked" in out.stdout and "keyCompromise" in out.stdout
    crl = json.loads(run(home, "crl", "publish", "--json").stdout)
    assert crl["number"] == 1 and crl["entries"] == 1
    res = openssl("crl", "-in", crl["pem_path"], "-CAfile", str(ca_pem), "-noout", "-text")
    assert "verify OK" in res.stderr + res.stdout
    assert f"Serial Number: {serial}" in res.stdout and "Key Compromise" in res.stdout
    assert "Feb  3 04:05:06 2025 GMT" in res.stdout
    table = run(home, "view", "--disposition", "revoked").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "DISPOSITION", "SERIAL"] and table[1].split()[:3] == ["2", "revoked", serial]
    assert "no matching requests" in run(home, "view", "--expired").stdout


def test_cli_errors_one_line_and_database_unchanged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init", "--name", "Errors CA")
    run(home, "submit", str(make_req(tmp_path, "ok.example.com")))
    before = state(home)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(300).replace(b"0", b"1").replace(b"-", b"+"))
    big = tmp_path / "big.csr"
    big.write_bytes(b"\x30" + b"\x01" * 70000)
    cases = [
        (("submit", str(garbage)), "submit: 0x8007000D ERROR_INVALID_DATA: "),
        (("submit", str(big)), "submit: 0x80070057 E_INVALIDARG: request is 70001 bytes"),
        (("revoke", "DEADBEEF"), "serial DEADBEEF: 0x80092004 CRYPT_E_NOT_FOUND: "),
        (("revoke", "01", "--reason", "7"), "revocation reason: 0x80070057 E_INVALIDARG: reason code 7"),
        (("issue", "1"), "request 1: 0x80094003 CERTSRV_E_BAD_REQUESTSTATUS: cannot issue: request is issued"),
        (("deny", "42"), "request 42: 0x80094002 CERTSRV_E_NO_REQUEST: "),
        (("get", "42"), "request 42: 0x80094002 CERTSRV_E_NO_REQUEST: "),
        (("init", "--name", "Again"), "0x80070050 ERROR_FILE_EXISTS: a CA home exists here; use --force"),
    ]
    for args, expected in cases:
        err = run(home, *args, ok=False).stderr
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("certsrv: ") and expected in lines[0], err
    assert state(home) == before


def test_cli_pending_flow_and_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pfile = tmp_path / "pass"
    pfile.write_text("s3cret phrase\n")
    run(home, "init", "--name", "Pending CA", "--pending", "--passphrase-file", str(pfile), "--key-type", "rsa-2048")
    assert (home / "private" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    for i in range(3):
        out = run(home, "submit", str(make_req(tmp_path, f"p{i}.example.com")))
        assert out.stdout.startswith(f"request {i + 1}: pending") and "Taken Under Submission" in out.stdout
    assert "issued" in run(home, "issue", "1").stdout
    out = run(home, "deny", "2").stdout
    assert out.startswith("request 2: denied") and "status 0x80094014" in out and "Denied by" in out
    assert "issued" in run(home, "resubmit", "2").stdout
    pending = json.loads(run(home, "view", "--disposition", "pending", "--json").stdout)
    assert [r["request_id"] for r in pending] == [3]
    # The passphrase file recorded at init is used by later commands; an explicit wrong one is refused.
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    err = run(home, "view", "--passphrase-file", str(wrong), ok=False).stderr
    assert "0x80070056 ERROR_INVALID_PASSWORD: wrong passphrase" in err
    out = run(home, "view", "--passphrase-env", "MY_PHRASE", env={"MY_PHRASE": "s3cret phrase"})
    assert "pending" in out.stdout


def test_cli_env_passphrase_and_subordinate(tmp_path: Path) -> None:
    root, sub = tmp_path / "root", tmp_path / "sub"
    env = {"CERTSRV_KEY_PASSPHRASE": "env phrase"}
    run(root, "init", "--name", "CLI Root", env=env)
    assert (root / "private" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    err = run(root, "view", ok=False).stderr
    assert "ERROR_INVALID_PASSWORD" in err and "CERTSRV_KEY_PASSPHRASE" in err
    out = run(sub, "init", "--name", "CLI Sub", "--subordinate")
    assert "ca.csr" in out.stdout
    err = run(sub, "submit", str(make_req(tmp_path, "early.example.com")), ok=False).stderr
    assert "CERTSRV_E_INVALID_CA_CERTIFICATE" in err and "install-cert" in err
    sub_pem = tmp_path / "sub.pem"
    # A CA template waits for an Officer (issue 9): the root's owner issues it, then fetches the certificate.
    out = run(root, "submit", str(sub / "ca.csr"), "--template", "subordinate", "--out", str(sub_pem), env=env)
    assert "pending" in out.stdout and not sub_pem.exists()
    rid = out.stdout.split()[1].rstrip(":")
    assert "issued" in run(root, "issue", rid, env=env).stdout
    run(root, "get", rid, "--out", str(sub_pem), env=env)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(sub_pem.read_bytes() + (root / "publish" / "ca.crt").read_bytes())
    assert "CN=CLI Sub issued by CN=CLI Root" in run(sub, "install-cert", str(bundle)).stdout
    leaf = tmp_path / "leaf.pem"
    run(sub, "submit", str(make_req(tmp_path, "late.example.com")), "--out", str(leaf))
    res = openssl("verify", "-CAfile", str(root / "publish" / "ca.crt"), "-untrusted", str(sub_pem), str(leaf))
    assert res.stdout.strip().endswith(": OK")


@pytest.mark.parametrize("bad", ["--key-type=dsa-1024", "--days=0"])
def test_cli_usage_errors(tmp_path: Path, bad: str) -> None:
    p = subprocess.run([CERTSRV, "init", "--name", "X", bad, "--home", str(tmp_path / "h")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "Invalid value" in p.stderr
    assert not (tmp_path / "h").exists()
