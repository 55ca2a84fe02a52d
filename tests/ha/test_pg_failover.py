"""PostgreSQL primary lost (issue 14, Must show): under load through two nodes, the primary is stopped with
``-m immediate`` (SIGQUIT to the postmaster), then its synchronous standby is promoted: once the nodes
reconnect (the multi-host URL with target_session_attrs=read-write lands on the promoted standby), every
acknowledged write is in the database, ids and CRL numbers go on increasing, and a submit whose outcome was
unknown, retried with its request key, gives one certificate. A few trials by default, 20 under ``-m slow``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ha.harness import Load, check_answered, check_monotonic, check_openssl, check_retries, ha_context
from pg_support import pair_context, promote, stop_immediate

DEFAULT_TRIALS = 2
SLOW_TRIALS = 20


def trial(work: Path, sync: str, workers: int = 0) -> dict[str, float | int]:
    """One failover: a fresh pair (the promoted standby has no partner left), a fresh CA, two nodes (``workers``:
    their worker processes; 2 is what `certsrv serve` runs by default here, its commits in a thread)."""
    with pair_context(sync=sync) as pair, ha_context(pair, nodes=2, workers=workers) as ha:
        load = Load(ha).start()
        try:
            load.wait(15, what="writes before the primary is stopped")
            writer = ha.wait_writer()
            cut = time.monotonic_ns()
            stop_immediate(pair.primary)
            promote(pair.standby)
            load.wait(15, what="writes after the standby was promoted")
            back = (time.monotonic_ns() - cut) / 1e9
        finally:
            load.stop()
        assert ha.wait_writer() is writer  # the writer node kept its role: it reconnected and went on
        with ha.db() as c:
            assert c.info.port == pair.standby.port  # re-read from the promoted standby
        check_answered(ha, load)
        check_monotonic(ha, load, cut)
        check_retries(ha, load)
        check_answered(ha, load)
        check_openssl(ha, load, work, n=2)
        return {"answered": load.answered(), "unknown": len(load.unknown), "writes_again_after_s": back}


@pytest.mark.parametrize("n", range(DEFAULT_TRIALS))
def test_primary_stopped_immediately_then_standby_promoted_loses_no_acknowledged_write(n: int, work: Path) -> None:
    trial(work, "on" if n % 2 == 0 else "remote_apply", workers=0 if n % 2 == 0 else 2)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(SLOW_TRIALS))
def test_primary_failover_trials(n: int, work: Path) -> None:
    trial(work, "on" if n % 2 == 0 else "remote_apply", workers=0 if n % 4 < 2 else 2)
