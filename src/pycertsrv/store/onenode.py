"""The one-node side of a store that has no other nodes (SQLite: one process holds the home's database).

It answers the several-nodes calls of issue 14 (:mod:`.postgres.node`) the way a lone writer would, so the
service and ``certsrv status`` hold either engine through the same calls: always the writer, epoch 0, no
replication, and the backup claim kept in memory (:class:`.claims.LocalClaims`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .claims import LocalClaims, node_name

NO_REPLICATION = ("the database is a SQLite file in the CA home: nothing replicates it; only backups (and "
                  "archiving) protect acknowledged writes")


class OneNode(LocalClaims):
    """Role calls of a store that is always its CA's only writer (mixed into the SQLite ``Store``)."""

    role = "writer"
    epoch = 0
    lease_fresh = True  # no lease to age: the home's lock keeps every other process out
    commits_wait_on_network = False  # a commit waits for one local fsync, never for another server

    def writer_info(self) -> dict[str, Any]:
        """This process, always the writer (epoch 0; no endpoints recorded)."""
        return {"holder": node_name(), "epoch": 0, "endpoints": [], "renewed_age_s": 0.0}

    def advertise(self, endpoints: Sequence[str]) -> None:
        """Nothing to record: no other node asks."""

    def try_promote(self) -> bool:
        """Already the writer."""
        return True

    def on_role_change(self, callback: Callable[[str], None]) -> None:
        """The role never changes: the callback is never called."""

    def replication(self) -> dict[str, Any]:
        """No replication (mode ``none``) with its warning."""
        return {"mode": "none", "synchronous_commit": None, "synchronous_standby_names": None, "standbys": [],
                "warning": NO_REPLICATION}
