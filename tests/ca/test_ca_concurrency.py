"""Thread safety: concurrent submissions get distinct ids and serials; racing officers on one request
give exactly one winner; revocations and CRL publication interleave safely."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pycertsrv import errors as E
from pycertsrv.ca import Authority
from pycertsrv.ca.models import serial_hex


def test_concurrent_submissions(ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any]) -> None:
    csrs = [make_csr(req_keys["ec" if i % 2 else "rsa"], f"c{i}.example.com") for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(ca.submit, csrs))
    ids = sorted(i.request_id for i in infos)
    assert ids == list(range(1, 49))
    rows = ca.store.select("request", order_by=["request_id"])
    assert len(rows) == 48 and len({r["serial"] for r in rows}) == 48
    assert {r["request_subject"] for r in rows} == {f"CN=c{i}.example.com" for i in range(48)}
    # Concurrent issuances share transactions (CA group commit): at most one log record each.
    assert 1 <= ca.store.applied_lsn <= 48
    assert ca._commit.items == 48


def test_racing_officers_one_winner(new_ca: Callable[..., Authority], make_csr: Callable[..., bytes],
                                    req_keys: dict[str, Any]) -> None:
    a = new_ca(policy={"mode": "pending"})
    rid = a.submit(make_csr(req_keys["ec"])).request_id
    barrier = threading.Barrier(6)
    results: list[str] = []

    def act(i: int) -> None:
        barrier.wait()
        try:
            (a.issue if i % 2 else a.deny)(rid)
            results.append("ok")
        except E.Conflict as e:
            assert e.hresult == E.CERTSRV_E_BAD_REQUESTSTATUS
            results.append("refused")

    threads = [threading.Thread(target=act, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 5
    assert a.store.applied_lsn == 2  # the submit and the single resolution


def test_revocations_while_publishing(ca: Authority, make_csr: Callable[..., bytes],
                                      req_keys: dict[str, Any]) -> None:
    serials = [ca.submit(make_csr(req_keys["ec"], f"r{i}.example.com")).serial or "" for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(ca.revoke, s, "superseded") for s in serials]
        crls = [pool.submit(ca.publish_crl) for _ in range(5)]
        for f in futs:
            f.result()
        numbers = sorted(f.result().number for f in crls)
    assert numbers == [1, 2, 3, 4, 5]
    final = ca.publish_crl()
    assert final.number == 6 and final.entries == 20


def test_store_failure_reaches_every_caller(ca: Authority, make_csr: Callable[..., bytes],
                                            req_keys: dict[str, Any]) -> None:
    csrs = [make_csr(req_keys["ec"], f"f{i}.example.com") for i in range(8)]
    ca.submit(csrs[0])
    ca.store.close()  # the store refuses transactions from now on
    errors: list[E.CertSrvError] = []

    def go(data: bytes) -> None:
        try:
            ca.submit(data)
        except E.CertSrvError as e:
            errors.append(e)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(go, csrs[1:]))
    assert len(errors) == 7 and all(e.hresult == E.E_UNEXPECTED and "closed" in e.message for e in errors)
    b = Authority.open(ca.home.root)  # nothing half-written: one issued request, re-read from disk
    try:
        assert [r.request_id for r in b.view()] == [1]
    finally:
        b.close()


def test_small_batches_hand_the_lead_on(ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any],
                                        monkeypatch: Any) -> None:
    # More waiting callers than one batch takes: the leader must wake exactly its batch and hand the lead
    # to the oldest queued caller, and every caller must get its own row back.
    from pycertsrv.ca import commit

    monkeypatch.setattr(commit, "MAX_BATCH", 2)
    csrs = [make_csr(req_keys["ec"], f"b{i}.example.com") for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        infos = list(pool.map(ca.submit, csrs))
    assert sorted(i.request_id for i in infos) == list(range(1, 41))
    by_id = {r["request_id"]: r for r in ca.store.select("request")}
    for i, info in enumerate(infos):
        row = by_id[info.request_id]
        assert row["request_subject"] == f"CN=b{i}.example.com" and row["serial"] == info.serial
    assert len({r["serial"] for r in by_id.values()}) == 40
    assert ca._commit.items == 40 and ca._commit.batches >= 20  # at most 2 per transaction
    assert ca.store.applied_lsn == ca._commit.batches


def test_serial_in_database_or_in_flight_is_never_reused(ca: Authority, make_csr: Callable[..., bytes],
                                                         req_keys: dict[str, Any], monkeypatch: Any) -> None:
    from pycertsrv.ca import authority, enroll

    first = ca.submit(make_csr(req_keys["ec"], "one.example.com"))
    taken = int(first.serial or "", 16)
    held, fresh = (1 << 100) + 1, (1 << 100) + 2
    picks = iter([held, taken, held, fresh])  # the in-flight one, the stored one, the in-flight one again
    monkeypatch.setattr(authority, "random_serial", lambda: next(picks))  # _reserve_serial (issue, resubmit)
    monkeypatch.setattr(enroll, "random_serial", lambda: next(picks))  # a new request's, checked by the writer
    n, text = ca._reserve_serial()  # an issuance in flight holds `held`
    assert n == held
    try:
        second = ca.submit(make_csr(req_keys["ec"], "two.example.com"))
    finally:
        ca._release_serial(text)
    assert second.serial == serial_hex(fresh)
    rows = ca.store.select("request", order_by=["request_id"])
    assert [r["serial"] for r in rows] == [first.serial, serial_hex(fresh)]
    cert = second.certificate
    assert cert is not None and cert.serial_number == fresh
