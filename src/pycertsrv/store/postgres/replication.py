"""The PostgreSQL replication state of the CA database's server (issue 14: nothing acknowledged lost).

An acknowledged write survives the loss of the primary only when a standby confirmed it before the commit
returned: ``synchronous_standby_names`` names a streaming standby and ``synchronous_commit`` is ``on``
(flushed there) or ``remote_apply`` (applied there). ``remote_write`` waits for the standby's operating
system only (lost if both hosts crash). With asynchronous replication, or none, the state carries a
warning that ``certsrv status``, ``/v1/health`` and the service log show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

SYNC_COMMIT_LEVELS = ("on", "remote_apply", "remote_write")  # the levels that wait for a synchronous standby

STANDBYS_SQL = ("SELECT application_name, state, sync_state, extract(epoch FROM replay_lag) "
                "FROM pg_stat_replication ORDER BY application_name")

ASYNC_WARNING = ("replication is asynchronous: acknowledged writes can be lost on failover (a revoked "
                 "certificate can come back valid); set synchronous_standby_names and synchronous_commit = on "
                 "or remote_apply on the primary")
NONE_WARNING = ("no standby server streams from this primary: acknowledged writes are lost with it (only "
                "backups remain); add a synchronous standby")
NOT_CONNECTED_WARNING = ("synchronous replication is configured but no synchronous standby is streaming now: "
                         "commits wait until one is (writes hang); start or repair the standby")
REMOTE_WRITE_WARNING = ("synchronous_commit = remote_write: an acknowledged write is in the standby's memory, "
                        "not on its disk; a crash of both hosts can lose it; prefer on or remote_apply")


def classify(sync_commit: str, names: str, standbys: list[dict[str, Any]]) -> tuple[str, str | None]:
    """``(mode, warning)`` from the settings and ``pg_stat_replication``: mode is ``sync``, ``async`` or
    ``none``; the warning is None only when acknowledged writes are on two servers."""
    if sync_commit in SYNC_COMMIT_LEVELS and names.strip():
        if not any(s["sync_state"] in ("sync", "quorum") and s["state"] == "streaming" for s in standbys):
            return "sync", NOT_CONNECTED_WARNING
        return "sync", REMOTE_WRITE_WARNING if sync_commit == "remote_write" else None
    if standbys:
        return "async", ASYNC_WARNING
    return "none", NONE_WARNING


def replication_state(rows: Callable[[str], Sequence[Sequence[Any]]]) -> dict[str, Any]:
    """``{"mode", "synchronous_commit", "synchronous_standby_names", "standbys": [{"name", "state",
    "sync_state", "replay_lag_s"}], "warning"}`` as the server that ``rows(query)`` reads (the primary) sees it.

    ``pg_stat_replication`` shows other sessions' details only to superusers and ``pg_monitor`` members;
    for others the state and sync_state read as None (grant pg_monitor to the CA's role to see them).
    """
    sync_commit = str(rows("SELECT current_setting('synchronous_commit')")[0][0])
    names = str(rows("SELECT current_setting('synchronous_standby_names')")[0][0])
    standbys = [{"name": r[0], "state": r[1], "sync_state": r[2],
                 "replay_lag_s": float(r[3]) if r[3] is not None else None}
                for r in rows(STANDBYS_SQL)]
    mode, warning = classify(sync_commit, names, standbys)
    return {"mode": mode, "synchronous_commit": sync_commit, "synchronous_standby_names": names,
            "standbys": standbys, "warning": warning}
