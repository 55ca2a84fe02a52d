"""The issuance bench compares like with like: its raw ceiling signs the same certificate content as
``Authority.submit`` (same issuer, key, algorithm, extensions in the same order with the same values),
and its storage-disabled run goes through ``submit`` while writing nothing."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509

from pycertsrv.ca import Authority

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ca_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ca_bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("ca_type", "req_type"), [("ec-p256", "ec-p256"), ("ec-p256", "rsa-2048"),
                                                   ("rsa-2048", "ec-p256")])
def test_raw_ceiling_signs_what_submit_signs(new_ca: Callable[..., Authority], ca_type: str, req_type: str) -> None:
    bench = _bench()
    a = new_ca(ca_type)
    csrs = bench._csrs(req_type, 2)
    issued = a.submit(csrs[0]).certificate
    assert issued is not None
    csr = x509.load_der_x509_csr(csrs[0])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    raw = bench._signer(a)(csr.subject, csr.public_key(), san)
    assert [(e.oid, e.critical, e.value) for e in raw.extensions] == \
        [(e.oid, e.critical, e.value) for e in issued.extensions]
    assert raw.signature_algorithm_oid == issued.signature_algorithm_oid
    assert raw.issuer == issued.issuer and raw.subject == issued.subject
    assert raw.public_key() == issued.public_key()
    raw.verify_directly_issued_by(a.certificate)


def test_storage_disabled_run_writes_nothing(ca: Authority) -> None:
    bench = _bench()
    csrs = bench._csrs("ec-p256", 3)
    committer = ca._commit
    scratch: Any = bench._NoStorage()
    ca._commit = scratch
    try:
        infos = [ca.submit(d) for d in csrs]
    finally:
        ca._commit = committer
    assert all(i.certificate is not None for i in infos)
    assert scratch.rows == 3 * 7  # one request row and six extension rows each, dropped
    assert ca.store.count("request") == 0 and ca.store.count("extension") == 0 and ca.store.applied_lsn == 0
