"""Issue 14 on a SQLite home (one node, always the writer): ``/v1/health`` carries node, replication and warnings,
``/v1/health/writer`` answers 200 and ``/v1/health/standby`` 503 (Patroni's /primary and /replica), both to a
caller with no role; ``certsrv status`` shows role, epoch and replication; ``[service] advertise`` is what the
node says it listens on."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pycertsrv.client import Client
from support import Service, as_uid, certsrv, make_home

NOBODY = 65534


def _raw(c: Client, path: str) -> tuple[int, Any]:
    """Status and JSON body of a GET, whatever the status (a health probe's 503 is an answer, not an error)."""
    r = c._http.get(path)
    return r.status_code, r.json()


def test_a_sqlite_home_is_its_own_writer(tmp_path: Path) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="nh", dir="/tmp"))
    os.chmod(sockdir, 0o755)
    sock = sockdir / "s.sock"
    home = make_home(tmp_path / "H", socket=str(sock), socket_mode=0o666)
    svc = Service(home).start()
    try:
        with svc.client() as c:
            h = c.call("GET", "/v1/health")
            w_status, w_body = _raw(c, "/v1/health/writer")
            s_status, s_body = _raw(c, "/v1/health/standby")
            crl = c.call("GET", "/ca/crl")
        node = h["node"]
        assert h["role"] == "writer" and node["role"] == "writer" and node["epoch"] == 0
        assert node["name"].endswith(f":{svc.pid}") and node["holder"] == node["name"]
        assert node["writer"]["endpoints"] == [f"unix:{sock}"]
        assert h["replication"]["mode"] == "none"  # its note stays there: one node is the operator's choice
        assert h["warnings"] == []
        # GET /ca/crl: the newest CRL from the database, the one published in the home (checked with openssl)
        pem = tmp_path / "crl.pem"
        pem.write_text(crl["crl_pem"])
        out = subprocess.run(["openssl", "crl", "-in", str(pem), "-noout", "-crlnumber"], capture_output=True,
                             text=True, check=True).stdout
        assert int(out.strip().split("=", 1)[1], 16) == crl["number"] == h["crl"]["number"]
        assert crl["crl_pem"] == (home.root / "publish" / "ca.crl.pem").read_text()
        assert (w_status, w_body["role"]) == (200, "writer")
        assert (s_status, s_body["role"]) == (503, "writer")

        # a load balancer has no role: the probes answer it, the full health does not
        def probe(c: Client) -> dict[str, Any]:
            return {"writer": _raw(c, "/v1/health/writer")[0], "standby": _raw(c, "/v1/health/standby")[0],
                    "health": _raw(c, "/v1/health")[0]}

        assert as_uid(sock, NOBODY, NOBODY, probe) == {"writer": 200, "standby": 503, "health": 403}

        r = certsrv("status", "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        assert f"role: writer ({node['name']}), lease epoch 0" in r.stdout
        assert "replication: none" in r.stdout and "WARNING" not in r.stdout
        doc = json.loads(certsrv("status", "--json", "--home", str(home.root)).stdout)["health"]
        assert doc["node"]["role"] == "writer" and doc["replication"]["mode"] == "none"
    finally:
        svc.ensure_stopped()


def test_advertise_names_the_endpoints(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", advertise=["ca1.example:8443", "unix:/run/certsrv/ca.sock"])
    svc = Service(home).start()
    try:
        with svc.client() as c:
            node = c.call("GET", "/v1/health")["node"]
        assert node["writer"]["endpoints"] == ["ca1.example:8443", "unix:/run/certsrv/ca.sock"]
    finally:
        svc.ensure_stopped()
