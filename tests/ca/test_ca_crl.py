"""Revocation and CRLs: reasons by name or code, hold and unrevoke, CRL numbers and times from the
database and the config, the crl table, the published files, and crl_due()."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pycertsrv.ca import REASON_CODES, Authority, parse_reason
from pycertsrv.ca.models import parse_iso


@pytest.mark.parametrize(("given", "code"), [
    ("keyCompromise", 1), ("key-compromise", 1), ("KEY_COMPROMISE", 1), ("1", 1), (1, 1),
    ("cACompromise", 2), ("ca-compromise", 2), ("superseded", 4), ("certificateHold", 6), ("certificate-hold", 6),
    ("privilegeWithdrawn", 9), ("aACompromise", 10), ("unspecified", 0), (0, 0),
])
def test_reason_names_and_codes(given: str | int, code: int) -> None:
    assert parse_reason(given) == code


def _crl_entries(a: Authority) -> dict[int, x509.RevokedCertificate]:
    path = a.home.publish_dir / "ca.crl"
    crl = x509.load_der_x509_crl(path.read_bytes())  # re-read the published file
    assert crl.is_signature_valid(a.certificate.public_key())  # type: ignore[arg-type]
    return {r.serial_number: r for r in crl}


def test_every_reason_on_the_crl(ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    serials = {}
    inv = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for name, code in REASON_CODES.items():
        if name == "removeFromCRL":
            continue
        info = ca.submit(make_csr(req_keys["ec"], f"{name.lower()}.example.com"))
        ca.revoke(info.serial or "", code, inv if code == 1 else None)
        serials[int(info.serial or "", 16)] = code
    keep = ca.submit(make_csr(req_keys["ec"], "kept.example.com"))
    info = ca.publish_crl()
    entries = _crl_entries(ca)
    assert set(entries) == set(serials) and int(keep.serial or "", 16) not in entries
    assert info.entries == len(serials)
    for serial, code in serials.items():
        e = entries[serial]
        try:
            reason = e.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        if code == 0:
            assert reason is None  # RFC 5280 §5.3.1: omit unspecified
        else:
            assert reason is not None and reason.name == _flag_name(code)
        if code == 1:
            assert e.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == inv


def _flag_name(code: int) -> str:
    return {1: "key_compromise", 2: "ca_compromise", 3: "affiliation_changed", 4: "superseded",
            5: "cessation_of_operation", 6: "certificate_hold", 9: "privilege_withdrawn", 10: "aa_compromise"}[code]


def test_hold_unrevoke_and_final(ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    a = ca.submit(make_csr(req_keys["ec"], "held.example.com"))
    b = ca.submit(make_csr(req_keys["ec"], "final.example.com"))
    sa, sb = a.serial or "", b.serial or ""
    ca.revoke(sa, "certificateHold")
    held = ca.revoke(sb, "certificateHold")
    ca.publish_crl()
    assert set(_crl_entries(ca)) == {int(sa, 16), int(sb, 16)}
    back = ca.unrevoke(sa.lower())
    assert back.disposition_name == "issued" and back.revoked_at is None and back.revocation_reason is None
    final = ca.revoke(sb, "keyCompromise")
    assert final.revocation_reason == 1 and final.revoked_at == held.revoked_at  # the hold's date is kept
    crl2 = ca.publish_crl()
    entries = _crl_entries(ca)
    assert set(entries) == {int(sb, 16)} and crl2.number == 2
    assert ca.get_request(a.request_id).disposition_name == "issued"


def test_crl_numbers_times_table_and_files(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                                           req_keys: dict[str, Any]) -> None:
    a = new_ca()
    a.config.crl.validity_hours = 36  # the config model is the live one the Authority reads
    assert a.crl_due() and a.latest_crl() is None
    assert [p.name for p in a.dynamic_files()] == ["ca.crt", "ca.cer"]
    first = a.publish_crl()
    second = a.publish_crl()
    assert (first.number, second.number) == (1, 2)
    rows = a.store.select("crl", order_by=["number"])
    assert [r["number"] for r in rows] == [1, 2]
    assert bytes(rows[1]["raw"]) == second.der == (a.home.publish_dir / "ca.crl").read_bytes()
    pem = (a.home.publish_dir / "ca.crl.pem").read_bytes()
    assert x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER) == second.der
    crl = x509.load_der_x509_crl(second.der)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=36)
    assert rows[1]["this_update"] == crl.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = a.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert [p.name for p in a.dynamic_files()] == ["ca.crt", "ca.cer", "ca.crl", "ca.crl.pem"]
    # crl_due: not right after publishing; due after the period, past nextUpdate, or when a file is gone.
    assert not a.crl_due()
    this_update = parse_iso(second.this_update)
    assert this_update is not None
    assert a.crl_due(this_update + dt.timedelta(hours=a.config.crl.period_hours))
    assert not a.crl_due(this_update + dt.timedelta(hours=a.config.crl.period_hours) - dt.timedelta(seconds=1))
    (a.home.publish_dir / "ca.crl.pem").unlink()
    assert a.crl_due()
