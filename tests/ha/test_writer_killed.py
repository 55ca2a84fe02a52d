"""Writer killed (issue 14, Must show): SIGKILL the writer node under load; a standby takes over; every
answered issuance and revocation is in the database; request ids and CRL numbers stay monotonic; a retried
submit with the same request key makes no second certificate; certificates check with openssl."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ha.harness import (
    LEASE_TTL,
    Load,
    check_answered,
    check_monotonic,
    check_openssl,
    check_retries,
    ha_context,
    node_epoch,
)
from pg_support import PgPair


@pytest.mark.parametrize("workers", [0, 2])  # 2: `certsrv serve`'s default here (worker pool, batch committer)
def test_sigkill_of_the_writer_under_load_a_standby_takes_over_and_nothing_answered_is_lost(
        pair: PgPair, work: Path, workers: int) -> None:
    with ha_context(pair, nodes=3, workers=workers) as ha:
        load = Load(ha).start()
        cuts: list[int] = []
        takeovers: list[float] = []
        try:
            load.wait(20, what="writes before the first kill")
            for _ in range(2):  # the first writer, then the node that took over from it
                old = ha.wait_writer()
                epoch0, holder0 = ha.lease()
                assert holder0.endswith(f":{old.pid}"), (holder0, old.pid)
                cuts.append(time.monotonic_ns())
                old.kill()
                new = ha.wait_writer(other_than=old)
                takeovers.append((time.monotonic_ns() - cuts[-1]) / 1e9)
                load.wait(15, what=f"writes after {new.name} took over from {old.name}")
                epoch1, holder1 = ha.lease()
                assert epoch1 > epoch0 and holder1.endswith(f":{new.pid}"), (epoch0, holder0, epoch1, holder1)
                assert node_epoch(new) == epoch1
                old.start()  # the killed node comes back, as a standby: the lease is live
                assert not old.is_writer() and ha.lease()[1] == holder1
        finally:
            load.stop()
        print(f"takeover after SIGKILL (kill -> /v1/health/writer 200): {takeovers} s; lease_ttl {LEASE_TTL} s")
        assert len(load.issued) >= 30 and load.revoked and load.crls
        check_answered(ha, load)
        for cut in cuts:
            check_monotonic(ha, load, cut)
        check_retries(ha, load)
        check_answered(ha, load)  # the retries added nothing twice
        check_openssl(ha, load, work)
