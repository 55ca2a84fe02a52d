"""Backup on a CA of several nodes (issue 14): the cluster-wide backup claim and the generations' epoch lineage.

- **Claim**: one backup at a time per CA across every node (spec §2.2 [INF]: one external backup per instance;
  with several nodes the instance is the database). Prepare claims the CA's one backup slot in the store
  (``store.claim_backup``, PostgreSQL: a row timed by the server's clock; SQLite: in memory), the session renews
  it every third of its timeout (:meth:`~pycertsrv.backup.liveness.SessionEnding.renew_claim`), its end releases
  it. A node that dies stops renewing: its claim expires after the session timeout and the next Prepare takes it.
  The claim carries its own random id, never the session handle (other nodes' callers are told who holds it).
- **Lineage**: the writer lease epoch of every generation a session lists, as runs ``{epoch, gen_low,
  gen_high}``; the set's manifest records it and ``verify-backup`` checks that an incremental continues its base.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from ..epochs import runs_of
from ..errors import CertSrvError
from ..store.claims import node_name as node_name  # the node a backup claim names

log = logging.getLogger("pycertsrv.backup")


def claim(store: Any, ttl: float) -> str | None:
    """Claim the CA's backup slot for a new session; its claim id (None: a store without claims). Conflict
    (ERROR_BUSY) naming the node and session that hold a live claim."""
    take = getattr(store, "claim_backup", None)
    if take is None:
        return None
    cid = secrets.token_hex(8)
    take(cid, node_name(), ttl)
    return cid


def release(store: Any, cid: str, ttl: float) -> None:
    """Give the claim up; an unreachable database only delays it (the claim expires ``ttl`` after its renewal)."""
    try:
        store.release_backup_claim(cid)
    except CertSrvError as e:
        log.warning("backup: cannot release the cluster-wide backup claim %s (%s); it expires within %gs", cid, e, ttl)


def lineage_runs(store: Any, low: int, high: int) -> list[dict[str, int]]:
    """Generations ``low..high`` as runs of one writer lease epoch each (``Generation.epoch``; 0 on SQLite, and for a
    generation the store does not list)."""
    epochs = {g.generation: int(getattr(g, "epoch", 0) or 0) for g in store.generations()}
    return [r.to_json() for r in runs_of((g, epochs.get(g, 0)) for g in range(low, high + 1))]


__all__ = ["claim", "lineage_runs", "node_name", "release"]
