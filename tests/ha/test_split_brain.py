"""Split brain (issue 14, Must show): SIGSTOP the writer past its lease, let a standby take over, SIGCONT
it: the old writer cannot commit, and nothing it tries is applied (re-read from the database)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from ha.harness import WAIT, ha_context, keys_in_db, node_epoch, submit, until
from pg_support import PgPair
from pycertsrv.client import Client
from pycertsrv.errors import CertSrvError
from support import make_csr

NOT_WRITER = "0x80071397"  # ERROR_HOST_NODE_NOT_RESOURCE_OWNER (HA contract)


def test_a_frozen_writer_thawed_after_a_takeover_commits_nothing(pair: PgPair, work: Path) -> None:
    with ha_context(pair, nodes=2) as ha:
        a, b = ha.nodes
        assert ha.wait_writer() is a
        with Client(a.address, timeout=WAIT) as c:
            first = submit(c, make_csr("before.example.com"), uuid.uuid4().hex)
            c.publish_crl()
        epoch_a, _ = ha.lease()
        a.freeze()
        # Writes sent straight to A while it is frozen: they wait in its socket's backlog, and A handles them
        # when it is thawed, still believing it holds the lease until it looks.
        outcomes: dict[str, Any] = {}
        keys = [uuid.uuid4().hex for _ in range(3)]

        def to_a(what: str, call: Any) -> None:
            try:
                with Client(a.address, timeout=WAIT) as c:
                    outcomes[what] = call(c)
            except CertSrvError as e:
                outcomes[what] = e

        stuck = [threading.Thread(target=to_a, args=(f"submit {k}", lambda c, k=k: submit(
            c, make_csr(f"frozen-{k[:8]}.example.com"), k))) for k in keys]
        stuck.append(threading.Thread(target=to_a, args=("revoke", lambda c: c.revoke(first["serial"], "superseded"))))
        stuck.append(threading.Thread(target=to_a, args=("crl", lambda c: c.publish_crl())))
        for t in stuck:
            t.start()
        b_writer = ha.wait_writer(other_than=a)  # A's lease expires (it renews nothing), B takes it
        assert b_writer is b
        epoch_b, holder_b = ha.lease()
        assert epoch_b > epoch_a and holder_b.endswith(f":{b.pid}")
        with Client(b.address, timeout=WAIT) as c:
            on_b = submit(c, make_csr("on-b.example.com"), uuid.uuid4().hex)
        a.thaw()
        for t in stuck:
            t.join(WAIT * 2)
        # A answered none of them with success: each got an error (fenced, or "not the writer").
        succeeded = {w: o for w, o in outcomes.items() if not isinstance(o, CertSrvError)}
        assert len(outcomes) == len(stuck) and not succeeded, f"the old writer answered: {succeeded}"
        # A is a standby now and says who the writer is; a write sent to it is refused naming the writer.
        until("the old writer to become a standby", lambda: a.get("/v1/health/writer")[0] == 503, ha=ha)
        assert (a.health().get("node") or {}).get("role") == "standby"
        with Client(a.address, timeout=WAIT) as c, pytest.raises(CertSrvError) as refused:
            submit(c, make_csr("after-thaw.example.com"), uuid.uuid4().hex)
        assert NOT_WRITER in str(refused.value) and str(b.pid) in str(refused.value), str(refused.value)
        # Nothing A tried is in the database; what B did is; the lease is B's, unchanged.
        in_db = keys_in_db(ha)
        assert not [k for k in keys if k in in_db], "a write of the fenced writer was applied"
        with ha.db() as c:
            assert c.execute("SELECT revoked_at FROM request WHERE request_id = %s",
                             (first["request_id"],)).fetchone() == (None,)
            subjects = [str(r[0]) for r in c.execute("SELECT request_subject FROM request")]
        assert not [s for s in subjects if "frozen-" in s or "after-thaw" in s]
        assert int(on_b["request_id"]) > int(first["request_id"])
        assert ha.lease() == (epoch_b, holder_b) and node_epoch(b) == epoch_b
