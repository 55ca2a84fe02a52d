"""The backup claim (issue 14): one backup at a time per CA across every node, a dead node's claim expires.

On PostgreSQL two store objects stand for two nodes on one database (a writer and a standby: a claim is not
a CA write, either role may hold it); on SQLite one process is the only node, so both "nodes" are the one
store and the claim is local. The refusals are the same on both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.errors import ERROR_BUSY, Conflict, NotFound
from pycertsrv.store import Store
from pycertsrv.store.postgres import PgStore

Stores = tuple[Store | PgStore, Store | PgStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def two_nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "sqlite":
        s = Store.create(tmp_path / "home", "Claims CA")
        yield s, s
        s.close()
        return
    url = request.getfixturevalue("pg_url")
    a = PgStore.create(url, "Claims CA", lease_ttl=2.0)
    b = PgStore.open(url, lease_ttl=2.0, standby=True)
    assert (a.role, b.role) == ("writer", "standby")
    yield a, b
    b.close()
    a.close()


def test_a_second_backup_anywhere_is_busy_naming_the_holder_until_released(two_nodes: Stores) -> None:
    a, b = two_nodes
    a.claim_backup("s1", "node-a", 60.0)
    with pytest.raises(Conflict) as busy:
        b.claim_backup("s2", "node-b", 60.0)
    e = busy.value
    assert e.hresult == ERROR_BUSY and str(e).startswith("backup: 0x800700AA ERROR_BUSY: a backup of this CA is in "
                                                         "progress on node node-a (session s1, renewed ")
    a.claim_backup("s1", "node-a", 60.0)  # the same session claiming again renews it
    a.renew_backup_claim("s1")
    with pytest.raises(Conflict):
        b.renew_backup_claim("s2")  # s2 holds nothing: the live holder is named
    b.release_backup_claim("s2")  # releasing what one does not hold changes nothing
    with pytest.raises(Conflict):
        b.claim_backup("s2", "node-b", 60.0)
    a.release_backup_claim("s1")
    b.claim_backup("s2", "node-b", 60.0)
    with pytest.raises(Conflict) as other:
        a.claim_backup("s3", "node-a", 60.0)
    assert "node node-b (session s2" in other.value.message
    b.release_backup_claim("s2")
    with pytest.raises(NotFound):
        b.renew_backup_claim("s2")  # released: nothing to renew


def test_a_claim_not_renewed_within_its_ttl_expires_and_is_taken_over(two_nodes: Stores) -> None:
    a, b = two_nodes
    a.claim_backup("s1", "node-a", 0.3)  # node-a then "dies": it renews no more
    deadline = time.monotonic() + 30
    while True:
        try:
            b.claim_backup("s2", "node-b", 60.0)
            break
        except Conflict as e:
            assert "node node-a (session s1" in e.message
            assert time.monotonic() < deadline, "the dead node's claim never expired"
            time.sleep(0.05)
    with pytest.raises(Conflict) as taken:  # the late session learns it lost its claim
        a.renew_backup_claim("s1")
    assert "node node-b (session s2" in taken.value.message
    a.release_backup_claim("s1")  # does not release s2's claim
    with pytest.raises(Conflict):
        a.claim_backup("s3", "node-a", 60.0)
