"""With a service running on the home, the CA verbs must go through it (the home's lock is the service's,
so a direct open would fail with ERROR_SHARING_VIOLATION); the audit log and the database show they did."""

from __future__ import annotations

import json
from pathlib import Path

from test_ca_cli import openssl, run

from pycertsrv.ca import Authority
from pycertsrv.store import DISP_ISSUED, DISP_REVOKED
from support import Service, make_csr, make_home


def test_ca_verbs_use_the_running_service(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", name="Routed CA")
    req = tmp_path / "r.csr"
    req.write_bytes(make_csr("routed.example.com"))
    svc = Service(home).start()
    try:
        out = json.loads(run(home.root, "submit", str(req), "--json", "--out", str(tmp_path / "c.pem")).stdout)
        assert out["disposition"] == DISP_ISSUED
        serial = out["serial"]
        run(home.root, "revoke", serial, "--reason", "keyCompromise")
        run(home.root, "crl", "publish")
        rows = json.loads(run(home.root, "view", "--json").stdout)
        assert [r["serial"] for r in rows] == [serial]
        pem = run(home.root, "get", serial).stdout
        assert pem.startswith("-----BEGIN CERTIFICATE-----")
        audit = [json.loads(line) for line in home.audit_log.read_text().splitlines()]
        ops = {a.get("operation") for a in audit}
        assert {"submit", "revoke", "publish_crl"} <= ops, ops
    finally:
        assert svc.stop() == 0
    # Re-read from disk after the service stopped: the state the CLI asked for is there.
    with Authority.open(home.root) as a:
        info = a.view(serial=serial)[0]
        assert info.disposition == DISP_REVOKED and info.revocation_reason == 1
    text = openssl("crl", "-in", str(home.publish_dir / "ca.crl"), "-inform", "DER", "-noout", "-text").stdout
    assert serial in text.replace(":", "").upper() and "Key Compromise" in text
