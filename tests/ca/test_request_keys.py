"""Request keys in the CA (issue 14): a submit whose key the database holds returns the first answer, never a
second certificate -- retried, raced by threads, twice in one group-commit batch; bad keys refused in one line;
the unique index on the database (created with the schema and on open for an older database).

Everything is re-read from the database file after the Authority is closed, and the certificate checked with
``openssl verify``."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from pycertsrv.ca import Authority, RequestInfo
from pycertsrv.errors import E_INVALIDARG, ERROR_ALREADY_EXISTS, Conflict, InvalidArgument
from pycertsrv.requestkey import MAX_REQUEST_KEY, new_request_key
from support import ONE_LINE, db_query, make_csr, openssl_verify


def _db(home: Path) -> Path:
    return next((home / "db").glob("*.db"))


def _key_rows(home: Path, key: str) -> list[tuple[object, ...]]:
    return db_query(_db(home), "SELECT request_id FROM attribute WHERE name = 'RequestKey' AND value = ?", (key,))


def test_a_retried_submit_returns_the_first_answer(tmp_path: Path) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    csr = make_csr("retry.example.com")
    key = new_request_key()
    first = a.submit(csr, requester="alice", request_key=key)
    again = a.submit(csr, requester="alice", request_key=key)
    other = a.submit(csr, requester="alice", request_key=new_request_key())  # another key: a new request
    cert = a.get_certificate(first.request_id)
    ca_pem = a.certificate_path
    a.close()
    assert first.disposition_name == "issued"
    assert (again.request_id, again.serial, again.disposition) == (first.request_id, first.serial, first.disposition)
    assert again.certificate_der == first.certificate_der == cert
    assert other.request_id != first.request_id and other.serial != first.serial
    # Re-read from the file: one request and one key row for the key, two requests in all.
    assert _key_rows(home, key) == [(first.request_id,)]
    assert db_query(_db(home), "SELECT COUNT(*) FROM request") == [(2,)]
    assert db_query(_db(home), "SELECT raw_cert FROM request WHERE request_id = ?", (first.request_id,)) == [(cert,)]
    openssl_verify(ca_pem, cert, tmp_path)


def test_racing_submits_with_one_key_make_one_certificate(tmp_path: Path) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    csr = make_csr("race.example.com")
    key = "race-" + new_request_key()
    results: list[RequestInfo] = []
    start = threading.Barrier(12)

    def one() -> None:
        start.wait()
        results.append(a.submit(csr, requester="bob", request_key=key))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ca_pem = a.certificate_path
    a.close()
    ids = {r.request_id for r in results}
    serials = {r.serial for r in results}
    assert len(results) == 12 and len(ids) == 1 and len(serials) == 1
    assert _key_rows(home, key) == [(ids.pop(),)]
    rows = db_query(_db(home), "SELECT serial, raw_cert FROM request")
    assert len(rows) == 1 and rows[0][0] == serials.pop()
    openssl_verify(ca_pem, bytes(rows[0][1]), tmp_path)


def test_one_key_twice_in_one_commit_batch_is_written_once(tmp_path: Path) -> None:
    """The service's workers hand the writer a batch: two prepared requests with one key are one request."""
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    csr = make_csr("batch.example.com")
    roles = a.caller_roles()
    p1 = a.prepare(csr, requester="carol", template=None, attributes={"RequestKey": "k-batch"}, roles=roles)
    p2 = a.prepare(csr, requester="carol", template=None, attributes={"RequestKey": "k-batch"}, roles=roles)
    p3 = a.prepare(make_csr("other.example.com"), requester="carol", template=None, attributes=None, roles=roles)
    assert p1.serial != p2.serial  # both signed: only one may be written
    out = a.commit_prepared([p1, p2, p3])
    a.close()
    infos = [o for o in out if isinstance(o, RequestInfo)]
    assert [o.request_id for o in infos] == [1, 1, 2]
    assert infos[0].serial == infos[1].serial == p1.serial
    assert db_query(_db(home), "SELECT request_id, serial FROM request ORDER BY request_id") == [
        (1, p1.serial), (2, p3.serial)]
    assert _key_rows(home, "k-batch") == [(1,)]


def test_a_pending_request_answers_its_state_now(tmp_path: Path) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA", policy={"mode": "pending"})
    csr = make_csr("pending.example.com")
    first = a.submit(csr, requester="dave", request_key="p-1")
    assert first.disposition_name == "pending"
    assert a.submit(csr, requester="dave", request_key="p-1").request_id == first.request_id
    a.issue(first.request_id)
    again = a.submit(csr, requester="dave", request_key="p-1")
    a.close()
    assert (again.request_id, again.disposition_name) == (first.request_id, "issued") and again.certificate_der
    assert db_query(_db(home), "SELECT COUNT(*) FROM request") == [(1,)]


@pytest.mark.parametrize("bad, why", [
    ("", "it is empty"),
    ("k" * (MAX_REQUEST_KEY + 1), f"it has {MAX_REQUEST_KEY + 1} characters"),
    ("tab\there", "outside printable ASCII"),
    ("clé", "outside printable ASCII"),
])
def test_bad_keys_are_refused_in_one_line(tmp_path: Path, bad: str, why: str) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    with pytest.raises(InvalidArgument) as ei:
        a.submit(make_csr(), requester="eve", request_key=bad)
    with pytest.raises(InvalidArgument):  # the same rule for a key given as the attribute
        a.submit(make_csr(), requester="eve", attributes={"RequestKey": bad})
    assert a.submit(make_csr(), requester="eve", request_key="k" * MAX_REQUEST_KEY).disposition_name == "issued"
    a.close()
    line = str(ei.value)
    assert ei.value.hresult == E_INVALIDARG and ONE_LINE.match(f"certsrv: {line}"), line
    assert line.startswith("request key ") and "0x80070057 E_INVALIDARG" in line and why in line
    assert db_query(_db(home), "SELECT COUNT(*) FROM request") == [(1,)]  # nothing of the refused ones


def test_a_key_is_not_another_requesters_or_another_csrs(tmp_path: Path) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    csr = make_csr("mine.example.com")
    a.submit(csr, requester="frank", request_key="shared")
    with pytest.raises(Conflict) as other_user:
        a.submit(csr, requester="grace", request_key="shared")
    with pytest.raises(Conflict) as other_csr:
        a.submit(make_csr("theirs.example.com"), requester="frank", request_key="shared")
    a.close()
    for e in (other_user.value, other_csr.value):
        assert e.hresult == ERROR_ALREADY_EXISTS and "\n" not in str(e) and "request key 'shared'" in str(e)
    assert "another requester" in str(other_user.value) and "another CSR" in str(other_csr.value)
    assert db_query(_db(home), "SELECT COUNT(*) FROM request") == [(1,)]


def test_the_database_holds_a_key_once(tmp_path: Path) -> None:
    """The partial unique index: made with the schema, and on open for a database made before it."""
    home = tmp_path / "H"
    a = Authority.init(home, "Key CA")
    a.submit(make_csr(), requester="h", request_key="once")
    a.close()
    db = _db(home)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ux_attribute_request_key'").fetchone()
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO attribute VALUES (99, 'RequestKey', 'once')")
        conn.execute("INSERT INTO attribute VALUES (99, 'Other', 'once')")  # other attributes may repeat values
        conn.execute("INSERT INTO attribute VALUES (98, 'Other', 'once')")
        conn.rollback()
        conn.execute("DROP INDEX ux_attribute_request_key")  # as a database made before request keys
        conn.commit()
    finally:
        conn.close()
    Authority.open(home).close()
    assert db_query(db, "SELECT name FROM sqlite_master WHERE name = 'ux_attribute_request_key'") == [
        ("ux_attribute_request_key",)]
