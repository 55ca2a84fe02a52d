"""Split brain (issue 14, Must show): SIGSTOP the writer past its lease, let a standby take over, SIGCONT
it: the old writer cannot commit, and nothing it tries is applied (re-read from the database).

The writes aimed at the frozen writer are sent to it alone, as plain HTTP (a ``Client`` would follow the
writer to the new one, which is right for a client but would hide what the old writer itself does)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from ha.harness import WAIT, ha_context, keys_in_db, node_epoch, submit, until
from pg_support import PgPair
from pycertsrv.client import Client
from support import make_csr

NOT_WRITER = 0x80071397  # ERROR_HOST_NODE_NOT_RESOURCE_OWNER (HA contract)


def test_a_frozen_writer_thawed_after_a_takeover_commits_nothing(pair: PgPair, work: Path) -> None:
    with ha_context(pair, nodes=2) as ha:
        a, b = ha.nodes
        assert ha.wait_writer() is a
        with Client(a.address, timeout=WAIT) as c:
            first = submit(c, make_csr("before.example.com"), uuid.uuid4().hex)
            crl_a = int(c.publish_crl()["number"])
        epoch_a, _ = ha.lease()
        a.freeze()
        # Writes sent to A while it is frozen wait in its socket's backlog; A handles them when thawed, still
        # believing it holds the lease until it looks.
        keys = [uuid.uuid4().hex for _ in range(3)]
        csrs = {k: make_csr(f"frozen-{k[:8]}.example.com") for k in keys}
        calls: dict[str, tuple[str, str, Any]] = {
            **{f"submit {k}": ("POST", "/ca/requests", {"csr": csrs[k].decode(), "request_key": k}) for k in keys},
            "revoke": ("POST", f"/ca/certificates/{first['serial']}/revoke", {"reason": "superseded"}),
            "crl": ("POST", "/ca/crl", None),
        }
        answers: dict[str, tuple[int, Any]] = {}

        def to_a(what: str) -> None:
            method, path, body = calls[what]
            answers[what] = a.http(method, path, body, timeout=WAIT * 2)

        stuck = [threading.Thread(target=to_a, args=(w,)) for w in calls]
        for t in stuck:
            t.start()
        assert ha.wait_writer(other_than=a) is b  # A renews nothing: its lease expires and B takes it
        epoch_b, holder_b = ha.lease()
        assert epoch_b > epoch_a and holder_b.endswith(f":{b.pid}")
        with Client(b.address, timeout=WAIT) as c:
            on_b = submit(c, make_csr("on-b.example.com"), uuid.uuid4().hex)
            crl_b = int(c.publish_crl()["number"])
        a.thaw()
        for t in stuck:
            t.join(WAIT * 3)
        # A's own answers: every one a refusal (fenced, or not the writer), none a success.
        assert set(answers) == set(calls), answers
        ok = {w: s for w, (s, _) in answers.items() if s == 0 or s < 400}
        assert not ok, f"the old writer answered with success: {ok}: {answers}"
        # Then A is a standby that names B; a write sent to it is refused with the contract's HRESULT.
        until("the old writer to become a standby", lambda: a.get("/v1/health/writer")[0] == 503, ha=ha)
        assert (a.health().get("node") or {}).get("role") == "standby"
        status, body = a.http("POST", "/ca/requests", {"csr": make_csr("after.example.com").decode()})
        assert status == 503 and body["hresult"] == NOT_WRITER and body["writer"]["holder"] == holder_b, body
        # Nothing A tried is in the database; what B did is; the lease is B's, unchanged.
        assert not [k for k in keys if k in keys_in_db(ha)], "a write of the fenced writer was applied"
        with ha.db() as c:
            assert c.execute("SELECT revoked_at FROM request WHERE request_id = %s",
                             (first["request_id"],)).fetchone() == (None,)
            crls = [int(r[0]) for r in c.execute("SELECT number FROM crl WHERE number > %s ORDER BY number",
                                                 (crl_a,))]
            subjects = [str(r[0]) for r in c.execute("SELECT request_subject FROM request")]
        assert crls == [n for n in range(crl_a + 1, crl_b + 1)] and crl_b > crl_a, (crl_a, crl_b, crls)
        assert not [s for s in subjects if "frozen-" in s or "after." in s], subjects
        assert int(on_b["request_id"]) > int(first["request_id"])
        assert ha.lease() == (epoch_b, holder_b) and node_epoch(b) == epoch_b
        # A client that retries A's writes with their keys (it follows the writer to B) gets one each.
        with ha.client(timeout=WAIT) as c:
            again = {k: submit(c, csrs[k], k) for k in keys}
        assert {k: v for k, v in keys_in_db(ha).items() if k in keys} == {
            k: [int(r["request_id"])] for k, r in again.items()}
        # And A's refusals were the contract's: fenced means "not the writer" (503, naming B), whichever of its
        # checks noticed first, not some other failure of the commit.
        wrong = {w: (s, (body or {}).get("message")) for w, (s, body) in answers.items()
                 if s != 503 or (body or {}).get("hresult") != NOT_WRITER}
        assert not wrong, f"the fenced writer refused with something other than NotWriter: {wrong}"
