"""Request keys on the PostgreSQL engine (issue 14): the same answers as on SQLite, and the database's own unique
index (migration) refusing a second row with one key, on a real server started by the tests."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from pycertsrv.ca import Authority, RequestInfo
from support import make_csr, openssl_verify


def test_request_keys_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "H"
    a = Authority.init(home, "PG Key CA", database=pg_url)
    try:
        csr = make_csr("pg-key.example.com")
        first = a.submit(csr, requester="pg", request_key="pg-1")
        again = a.submit(csr, requester="pg", request_key="pg-1")
        assert (again.request_id, again.serial) == (first.request_id, first.serial)
        results: list[RequestInfo] = []
        race = make_csr("pg-race.example.com")  # one CSR: an ECDSA signature differs each time it is made
        start = threading.Barrier(8)

        def one() -> None:
            start.wait()
            results.append(a.submit(race, requester="pg", request_key="pg-race"))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 8 and len({r.request_id for r in results}) == 1
        ca_pem = a.certificate_path
    finally:
        a.close()
    with psycopg.connect(pg_url) as c:  # re-read from the server
        rows = c.execute("SELECT value, count(*) FROM attribute WHERE name = 'RequestKey' GROUP BY value "
                         "ORDER BY value").fetchall()
        assert rows == [("pg-1", 1), ("pg-race", 1)]
        assert c.execute("SELECT count(*) FROM request").fetchone() == (2,)
        cert = c.execute("SELECT raw_cert FROM request WHERE request_id = %s", (first.request_id,)).fetchone()
        assert c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'ux_attribute_request_key'").fetchone()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("INSERT INTO attribute VALUES (99, 'RequestKey', 'pg-1')")
    assert cert is not None
    openssl_verify(ca_pem, bytes(cert[0]), tmp_path)
