"""schemathesis (the ``st`` CLI) against ``/openapi.json`` of a live service over TLS: no 5xx, every response
conforms to the document, negative data is rejected, undeclared methods answer 405 with ``Allow``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Service, make_csr, make_home

from .helpers import ClientCreds, TLSMaterial

# A schema cannot say "a valid PKCS#10 request" or "an invalidity date not in the future": schema-valid bodies
# the CA refuses on content get 400 (E_INVALIDARG & co), which is the right answer for them.
CONFIG = """
[[operations]]
include-operation-id = "submit"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404", "409"]

[[operations]]
include-operation-id = "revoke"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404", "409"]

# Issue 14: a load balancer's probe answers 503 on a node of the other role (Patroni's /replica on a primary);
# this service is a lone writer, so /v1/health/standby is 503 by design (documented with its own schema).
[[operations]]
include-operation-id = "health_standby"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "503"]
"""


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, TLSMaterial, ClientCreds]]:
    d = tmp_path_factory.mktemp("fuzz")
    tls = TLSMaterial(d / "tls")
    fuzzer = tls.client("fuzzer")
    admin = tls.client("admin")
    # The fuzzer may do everything but stop the service (ServerControl 1 would end the run): no Administrator,
    # no Operator. Its calls to /control and /backup/* are therefore answered 403, and checked as such.
    home = make_home(d / "H", pending=True, tcp_host="127.0.0.1", tcp_port=0,
                     roles=[(f"cert-subject:{fuzzer.subject}", ["Officer", "Auditor", "Enrollee"]),
                            (f"cert-subject:{admin.subject}", ["Administrator"])],
                     **tls.service_config())
    svc = Service(home).start()
    with svc.tls_client(admin) as c:  # some real rows for ids and serials the fuzzer may hit
        for i in range(3):
            rid = c.submit(make_csr(f"seed{i}.example.com"))["request_id"]
            if i:
                c.issue(rid)
    yield svc, tls, fuzzer
    svc.ensure_stopped()


def test_schemathesis_all_checks(fuzz_env: tuple[Service, TLSMaterial, ClientCreds], tmp_path: Path) -> None:
    svc, tls, fuzzer = fuzz_env
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis CLI (st) is not installed"
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(CONFIG)
    args = [st, "--config-file", str(cfg), "--no-color", "run", f"https://{svc.tls_address}/openapi.json",
            "--tls-verify", str(tls.cafile), "--request-cert", str(fuzzer.cert), "--request-cert-key", str(fuzzer.key),
            "--checks", "all", "--max-examples", "20", "--seed", "20261125", "--workers", "1",
            "--suppress-health-check", "all", "--report-dir", str(tmp_path / "report")]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=540)
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-4000:]
    m = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) > 200, r.stdout[-3000:]
    log = svc.log()
    assert "Traceback" not in log and "unexpected failure" not in log, log[-4000:]
    with svc.client() as c:
        assert c.is_server_online()  # and the fuzzing did not stop it
