"""Issue 15, less CPU per issuance: the cheaper paths keep every check they replaced.

- Serial uniqueness (RFC 5280 §4.1.2.2) is read from the database once per group-committed batch, and still
  refuses a serial the database holds or another issuance of the batch holds.
- Serials come from a pool of CSPRNG bytes that a forked child never shares with its parent.
- The whole-name fast path of the DNS check accepts exactly what the full checks accept.
- A transaction still reads its own writes (searched at ``get`` instead of indexed at every put).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from pycertsrv.ca import Authority, issuance, names
from pycertsrv.store import Store


def _count_serial_reads(ca: Authority, monkeypatch: Any) -> list[int]:
    """Count the store's serial reads (the real query runs: a spy, not a stand-in)."""
    calls: list[int] = []
    real = ca.store.serials_in_use

    def spy(serials: Any) -> frozenset[str]:
        calls.append(len(serials))
        return real(serials)

    monkeypatch.setattr(ca.store, "serials_in_use", spy)
    return calls


def test_one_serial_read_per_batch_refuses_stored_and_repeated_serials(
        ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any], monkeypatch: Any) -> None:
    stored = ca.submit(make_csr(req_keys["ec"], "stored.example.com"))
    roles = ca.caller_roles()
    items = [ca.prepare(make_csr(req_keys["ec"], f"b{i}.example.com"), roles=roles) for i in range(4)]
    items[1].serial = items[1].row["serial"] = stored.serial  # the database holds it
    items[2].serial = items[2].row["serial"] = items[0].serial  # an earlier item of the batch holds it
    calls = _count_serial_reads(ca, monkeypatch)
    out = ca.commit_prepared(items)
    assert [o is None for o in out] == [False, True, True, False]
    assert len(calls) == 1  # one read for the whole batch
    rows = ca.store.select("request", order_by=["request_id"])  # re-read: the refused ones wrote nothing
    assert [r["request_subject"] for r in rows] == ["CN=stored.example.com", "CN=b0.example.com", "CN=b3.example.com"]
    assert len({r["serial"] for r in rows}) == 3
    assert ca.store.count("extension", [("request_id", "=", rows[-1]["request_id"])]) > 0


def test_concurrent_issuers_read_serials_once_per_batch(
        ca: Authority, make_csr: Callable[..., bytes], req_keys: dict[str, Any], monkeypatch: Any) -> None:
    csrs = [make_csr(req_keys["ec"], f"t{i}.example.com") for i in range(32)]
    calls = _count_serial_reads(ca, monkeypatch)
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(ca.submit, csrs))
    assert len(calls) == ca._commit.batches == ca.store.applied_lsn  # one read per group-committed batch
    assert sum(calls) >= 32  # every serial of every batch was asked about
    rows = ca.store.select("request")
    assert len(rows) == 32 and {r["serial"] for r in rows} == {i.serial for i in infos}


def test_serial_pool_is_not_shared_with_a_forked_child() -> None:
    issuance.random_serial()  # the pool holds bytes now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, issuance.random_serial().to_bytes(20, "big"))
        finally:
            os._exit(0)
    os.close(w)
    child = int.from_bytes(os.read(r, 20), "big")
    os.close(r)
    os.waitpid(pid, 0)
    mine = issuance.random_serial()
    assert child != mine  # without the reset at fork both draw the same next bytes
    for n in (child, mine):
        assert 1 << 64 <= n < 1 << issuance.SERIAL_BITS


def _full_checks(name: str) -> str | None:
    saved = names._HOST
    names._HOST = re.compile(r"(?!)")  # never matches: every name goes through the full checks
    try:
        return names.dns_problem(name)
    finally:
        names._HOST = saved


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.text(alphabet="aZ09-._*\n \u212a\u0131", max_size=20),
    st.lists(st.text(alphabet="ab9-", min_size=0, max_size=65), min_size=1, max_size=5).map(".".join),
))
def test_dns_fast_path_accepts_exactly_what_the_full_checks_accept(name: str) -> None:
    assert names.dns_problem(name) == _full_checks(name)


def test_dns_fast_path_edges() -> None:
    for ok in ("a", "host0.bench.example", "x" * 63 + ".com", ".".join(["a" * 63] * 3 + ["a" * 61])):
        assert names.dns_problem(ok) is None and _full_checks(ok) is None
    for bad in ("x" * 64 + ".com", ".".join(["a" * 63] * 3 + ["a" * 62]), "a.b\n", "10.0.0.1", "-a.b", "a..b",
                "\u212a.example.com", "a.b."):
        assert names.dns_problem(bad) == _full_checks(bad) is not None
    assert x509.DNSName("a.b").value == "a.b"


def test_transaction_reads_its_own_writes(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t")
    try:
        with store.transaction() as tx:
            tx.put("setting", {"name": "k", "value": "1"})
            tx.put("setting", {"name": "k", "value": "2"})
            assert tx.get("setting", "k") == {"name": "k", "value": "2"}
            tx.put("setting", {"name": "gone", "value": "x"})
            tx.delete("setting", "gone")
            assert tx.get("setting", "gone") is None
            assert tx.get("setting", "other") is None  # committed state (none)
        assert store.get("setting", "k") == {"name": "k", "value": "2"} and store.get("setting", "gone") is None
    finally:
        store.close()


def test_serials_in_use_over_many_statements(ca: Authority, make_csr: Callable[..., bytes],
                                             req_keys: dict[str, Any]) -> None:
    issued = [ca.submit(make_csr(req_keys["ec"], f"s{i}.example.com")).serial or "" for i in range(2)]
    asked = [f"{n:040X}" for n in range(1, 1200)]
    asked[3], asked[1100] = issued  # one in the first statement's share, one in the third's
    assert ca.store.serials_in_use(asked) == frozenset(issued)
    assert ca.store.serials_in_use([]) == frozenset()


def test_payload_encoding_is_the_same_through_the_type_cache() -> None:
    from pycertsrv.store import logfile

    ops: list[logfile.Op] = [
        ("extension", "p", [7, "2.5.29.14", 0, b"\x04\x02ab"]),
        ("extension", "p", [7, "2.5.29.15", True, bytearray(b"\x03\x02\x05\xa0")]),  # converted: bool, bytearray
        ("setting", "p", ["k", None]),
        ("attribute", "d", [7, "name"]),
    ]
    logfile._BY_TYPES.clear()
    first = logfile.encode_payload(ops)  # heads worked out
    again = logfile.encode_payload(ops)  # encoders found by the values' types
    assert first == again
    assert logfile.decode_payload(again) == [
        ("extension", "p", [7, "2.5.29.14", 0, b"\x04\x02ab"]),
        ("extension", "p", [7, "2.5.29.15", 1, b"\x03\x02\x05\xa0"]),
        ("setting", "p", ["k", None]),
        ("attribute", "d", [7, "name"]),
    ]
    assert (("extension", "p", int, str, bool, bytearray)) not in logfile._BY_TYPES
