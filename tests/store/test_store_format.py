"""Log format version 2: the binary payload codec, refusal of other versions, malformed payloads at replay.

The codec is checked by round trips (fixed cases and a property), by decoding every truncation and
damaged variant of a valid payload (each must raise ValueError, never return wrong rows), and end to
end: rows written through the store come back from SQLite after a replay byte for byte.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import abandon, commit_request, dump_db, write_at_end

from pycertsrv.errors import (
    E_INVALIDARG,
    JET_ERR_DATABASE_CORRUPTED,
    JET_ERR_LOG_FILE_CORRUPT,
    CorruptData,
    InvalidArgument,
)
from pycertsrv.store import TABLES, Store, StoreOptions, list_generations, log_name, logfile
from pycertsrv.store.logfile import decode_payload, encode_payload

OPTS = StoreOptions(log_size=1 << 20, checkpoint_records=0)
I64 = (-(1 << 63), (1 << 63) - 1)


def req(rid: int, **cols: Any) -> tuple[str, str, list[Any]]:
    """A put of a request row image with the given columns set."""
    names = TABLES["request"].column_names
    unknown = set(cols) - set(names)
    assert not unknown, unknown
    return ("request", "p", [rid if c == "request_id" else cols.get(c) for c in names])


# ------------------------------------------------------------------ round trips


def test_every_value_type_round_trips() -> None:
    ops = [
        req(1, disposition=I64[0], status_code=I64[1], disposition_message="", requester="żółw ✓ \U0001F512",
            raw_request=b"", raw_cert=bytes(range(256)) * 5, serial="00ff", revocation_reason=0),
        ("attribute", "p", [2, "name", None]),
        ("crl", "p", [3, "t", "n", b"\0" * 3, -1]),
        ("setting", "d", ["x"]),
        ("attribute", "d", [2, "name"]),
        ("backup_history", "p", [1, "full", "a", None, 1, 2, 3, 0]),
    ]
    payload = encode_payload(ops)
    assert decode_payload(payload) == ops
    # The same bytes inside a larger buffer decode from their offsets (as replay reads them from the mmap).
    framed = b"junk" + payload + b"tail"
    assert decode_payload(framed, 4, 4 + len(payload)) == ops


def test_floats_and_normalised_types() -> None:
    ops = [("setting", "p", ["f", 1.5]), ("setting", "p", ["inf", math.inf]),
           ("setting", "p", [True, bytearray(b"ab")]), ("setting", "p", ["mv", memoryview(b"cd")])]
    got = decode_payload(encode_payload(ops))
    assert got == [("setting", "p", ["f", 1.5]), ("setting", "p", ["inf", math.inf]), ("setting", "p", [1, b"ab"]),
                   ("setting", "p", ["mv", b"cd"])]
    assert type(got[2][2][0]) is int and type(got[2][2][1]) is bytes
    nan = decode_payload(encode_payload([("setting", "p", ["nan", math.nan])]))[0][2][1]
    assert math.isnan(nan)


VALUE = st.one_of(st.none(), st.integers(*I64), st.floats(allow_nan=False), st.text(max_size=40),
                  st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("extension"), st.just("p"), st.lists(VALUE, min_size=4, max_size=4)),
    st.tuples(st.just("attribute"), st.just("d"), st.lists(VALUE, min_size=2, max_size=2)),
    st.tuples(st.just("request"), st.just("p"), st.lists(VALUE, min_size=19, max_size=19)),
), min_size=1, max_size=6))
def test_round_trip_property(ops: list[tuple[str, str, list[Any]]]) -> None:
    assert decode_payload(encode_payload(ops)) == ops


# ------------------------------------------------------------------ malformed payloads


def test_every_truncation_and_extension_is_refused() -> None:
    payload = encode_payload([req(7, requester="alice", raw_request=b"xyz" * 10, disposition=20),
                              ("attribute", "p", [7, "a", "b"])])
    for cut in range(len(payload)):
        if cut == 0:
            continue
        with pytest.raises(ValueError):
            decode_payload(payload[:cut])
    with pytest.raises(ValueError):
        decode_payload(payload + b"\0")
    with pytest.raises(ValueError):
        decode_payload(b"")


@pytest.mark.parametrize("what, patch, needle", [
    ("ops", lambda p: bytes([2]) + p[1:], "payload cut short"),
    ("no-ops", lambda p: bytes([0]) + p[1:], "0 operations end"),
    ("table", lambda p: p[:2] + bytes([99]) + p[3:], "table code 99"),
    ("kind", lambda p: p[:3] + bytes([7]) + p[4:], "operation code 7"),
    ("count", lambda p: p[:4] + bytes([3]) + p[5:], "values for a 'p' operation on setting"),
    ("tag", lambda p: p[:5] + bytes([9]) + p[6:], "tag 9"),
    ("utf8", lambda p: p[:-1] + b"\xff", "utf-8"),
])
def test_damaged_payload_is_refused(what: str, patch: Any, needle: str) -> None:
    payload = encode_payload([("setting", "p", ["name", "valu"])])
    bad = patch(payload)
    with pytest.raises(ValueError) as ei:
        decode_payload(bad)
    assert needle in str(ei.value), (what, str(ei.value))


def test_unstorable_values_are_refused_before_anything_is_logged(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t", OPTS)
    try:
        commit_request(store, 1)
        size = store.generations()[-1].size
        for bad in (1 << 63, -(1 << 63) - 1, {"a": 1}, "\ud800"):
            with pytest.raises(InvalidArgument) as ei:
                with store.transaction() as tx:
                    tx.put("setting", {"name": "x", "value": bad})
            assert ei.value.hresult == E_INVALIDARG and "setting" in ei.value.message
        assert store.generations()[-1].size == size  # nothing appended
        commit_request(store, 2)  # the store is still usable
    finally:
        store.close()
    with Store.open(tmp_home, OPTS) as store:
        assert [r["request_id"] for r in store.select("request")] == [1, 2]
        assert store.get("setting", "x") is None


# ------------------------------------------------------------------ versions and replay


def test_version_1_log_is_refused_naming_the_file(tmp_home: Path) -> None:
    store = Store.create(tmp_home, "t", OPTS)
    commit_request(store, 1)
    db = store.db_path
    store.close()
    path = tmp_home / "logs" / log_name(1)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, 1)  # the version field, with the header CRC made valid again
    struct.pack_into("<I", data, logfile.HEADER.size, zlib.crc32(bytes(data[: logfile.HEADER.size])))
    path.write_bytes(bytes(data))
    before = dump_db(db)
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    err = ei.value
    assert err.hresult == JET_ERR_LOG_FILE_CORRUPT and err.function == path.name
    assert "log format version 1 is not supported" in err.message
    assert dump_db(db) == before


def test_malformed_payload_with_valid_crc_refuses_replay(tmp_home: Path, tmp_path: Path) -> None:
    """A record that passes its CRC but does not decode stops the replay; its batch is not applied."""
    store = Store.create(tmp_home, "t", OPTS)
    snap = store.snapshot(tmp_path / "empty.db")
    for rid in range(1, 6):
        commit_request(store, rid)
    db = store.db_path
    abandon(store)
    newest = list_generations(tmp_home / "logs")[1]
    bad = encode_payload([("setting", "p", ["x", "y"])])[:-1] + b"\xff"  # invalid UTF-8
    write_at_end(newest, logfile.encode_record(6, logfile.now_us(), bad))
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(snap.path.read_bytes())
    with pytest.raises(CorruptData) as ei:
        Store.open(tmp_home, OPTS)
    assert ei.value.hresult == JET_ERR_DATABASE_CORRUPTED and ei.value.function == newest.name
    assert "record LSN 6" in ei.value.message
    d = dump_db(db)
    assert d["applied_lsn"] == 0 and d["request"] == []  # the batch holding LSN 1..6 was rolled back


def test_replay_keeps_per_table_order_inside_a_batch(tmp_home: Path, tmp_path: Path) -> None:
    """Puts and deletes of the same keys, tables interleaved, in one replay batch: same rows as live."""
    store = Store.create(tmp_home, "t", OPTS)
    snap = store.snapshot(tmp_path / "empty.db")
    for i in range(30):
        with store.transaction() as tx:
            tx.put("attribute", {"request_id": 1, "name": "k", "value": f"v{i}"})
            tx.put("setting", {"name": "s", "value": str(i)})
            if i % 3 == 1:
                tx.delete("attribute", (1, "k"))
            if i % 5 == 2:
                tx.delete("setting", "s")
                tx.put("extension", {"request_id": i, "oid": "1.2", "flags": i, "value": bytes([i]) * i})
            if i % 7 == 3:
                tx.put("setting", {"name": "s", "value": "again"})
    db = store.db_path
    store.close()
    live = dump_db(db)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(snap.path.read_bytes())
    with Store.open(tmp_home, OPTS) as store:
        assert store.recovery.replayed == 30
    assert dump_db(db) == live
