"""The CA's health at a glance, read from the store and the service's state when asked (``GET /v1/health``,
``certsrv status``, and the gauges of ``/metrics``): one reader, several renderers, so they cannot disagree.

- **role** and **node**: ``writer`` or ``standby`` (issue 14, :mod:`pycertsrv.service.role`), the lease epoch,
  its holder and the writer's endpoints; **replication**: the PostgreSQL replication state (``mode`` sync, async
  or none); **warnings**: what an operator must act on (asynchronous replication can lose acknowledged writes on
  failover; a store or archive that is not ok).
- **store**: ``ok``, ``degraded: <reason>`` or ``failed: <reason>`` (the store's own health when it has
  one, :mod:`pycertsrv.store.health`), split into ``status`` and ``reason``.
- **last backup**: the newest recorded full and incremental set (``backup_history``): when it ended, how
  long it took, how many bytes it sent.
- **CRL**: number and nextUpdate of the newest CRL (RFC 5280 §5.1.2.5: after nextUpdate relying parties
  may refuse every certificate of this CA, so it is what an operator must watch).

Nothing here writes; every read is one indexed row (or a directory listing), so a scrape stays cheap.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..backup.history import SETTING_LAST_FULL_BYTES, SETTING_LAST_INCREMENTAL_BYTES
from ..errors import CertSrvError
from ..spec import FULL, INCREMENTAL
from ..store import DATABASE_ERRORS
from .role import ROLE_STANDBY as ROLE_STANDBY
from .role import ROLE_WRITER as ROLE_WRITER

_BYTES_SETTING = {FULL: SETTING_LAST_FULL_BYTES, INCREMENTAL: SETTING_LAST_INCREMENTAL_BYTES}
_READ_ERRORS: tuple[type[Exception], ...] = (CertSrvError, OSError, *DATABASE_ERRORS)


def _parse_time(text: str | None) -> dt.datetime | None:
    """Times in backup_history are ``isoformat()`` with an offset; CRL times are ``...Z``."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LastBackup:
    """The newest recorded set of one type."""

    type: str
    backup_id: int
    started: dt.datetime | None
    ended: dt.datetime | None
    size: int | None  # bytes sent; None for sets recorded before sizes were kept
    generations: tuple[int, int]

    @property
    def duration(self) -> float | None:
        """Seconds from Prepare to End."""
        if self.started is None or self.ended is None:
            return None
        return max(0.0, (self.ended - self.started).total_seconds())

    def to_json(self) -> dict[str, Any]:
        """As plain data (times ISO 8601 UTC)."""
        return {"type": self.type, "backup_id": self.backup_id,
                "time": self.ended.isoformat(timespec="seconds") if self.ended else None,
                "duration_seconds": None if self.duration is None else round(self.duration, 3),
                "size_bytes": self.size, "generations": list(self.generations)}


@dataclass(frozen=True)
class StoreState:
    """The store's state split for display: ``status`` ok/degraded/failed and its ``reason``."""

    state: str
    status: str
    reason: str
    summary: str

    @classmethod
    def of(cls, store: Any) -> StoreState:
        """Ask the store (``Store.health()`` when it has one; a store without one is ``ok``)."""
        h = store.health() if store is not None and hasattr(store, "health") else None
        state = str(getattr(h, "state", "ok") or "ok")
        status, _, reason = state.partition(":")
        return cls(state, status.strip() or "ok", reason.strip(), str(getattr(h, "summary", state) or state))

    @property
    def degraded(self) -> bool:
        """Anything but ok (degraded or failed)."""
        return self.status != "ok"


def last_backups(store: Any) -> dict[str, LastBackup | None]:
    """The newest recorded full and incremental set (``None`` when there is none of that type)."""
    out: dict[str, LastBackup | None] = {}
    for kind in (FULL, INCREMENTAL):
        rows = store.select("backup_history", [("kind", "=", kind)], order_by=["-backup_id"], limit=1)
        if not rows:
            out[kind] = None
            continue
        r = rows[0]
        size_row = store.get("setting", _BYTES_SETTING[kind])
        size = None
        if size_row is not None and str(size_row["value"]).isdigit():
            size = int(size_row["value"])
        out[kind] = LastBackup(kind, int(r["backup_id"]), _parse_time(r["started_at"]), _parse_time(r["ended_at"]),
                               size, (int(r["gen_low"]), int(r["gen_high"])))
    return out


def log_on_disk(store: Any, last: dict[str, LastBackup | None]) -> tuple[int, int]:
    """Log generations on disk, and bytes of log written since the newest backup of either type.

    The generations above the newest set's ``gen_high`` hold every record it does not (the current
    generation included): that is what a disk loss would cost now. With no backup at all, every byte counts.
    """
    gens = store.log_space()
    covered = max((b.generations[1] for b in last.values() if b is not None), default=0)
    return len(gens), sum(size for g, size in gens.items() if g > covered)


@dataclass(frozen=True)
class CRLState:
    """The newest CRL's number and nextUpdate."""

    number: int
    next_update: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        """As plain data."""
        return {"number": self.number,
                "next_update": self.next_update.isoformat(timespec="seconds") if self.next_update else None}


class CRLCache:
    """The newest CRL's nextUpdate, re-read only when the CRL number changes (a CRL row holds the whole
    DER, which a frequent scrape should not read again and again)."""

    def __init__(self) -> None:
        self._number: int | None = None
        self._state: CRLState | None = None

    def get(self, store: Any) -> CRLState | None:
        """The newest CRL (None before the first one)."""
        number = store.max_value("crl", "number")
        if number is None:
            return None
        if number != self._number:
            rows = store.select("crl", [("number", "=", number)], limit=1)
            if not rows:
                return None
            self._state = CRLState(int(number), _parse_time(rows[0]["next_update"]))
            self._number = number
        return self._state


def report(authority: Any, *, online: bool, backup_manager: Any = None, crl: CRLCache | None = None,
           archiver: Any = None, node: Any = None) -> dict[str, Any]:
    """The health document of ``GET /v1/health`` (what ``certsrv status`` puts in words).

    :param authority: the open Authority.
    :param online: IsServerOnline's answer.
    :param backup_manager: the service's BackupManager (sessions open), if any.
    :param crl: a cache for the CRL read.
    :param archiver: the service's archive shipper (issue 13), if archiving is on.
    :param node: the service's :class:`~pycertsrv.service.role.NodeRole` (None: a lone writer).
    """
    store = getattr(authority, "store", None)
    st = StoreState.of(store)
    body: dict[str, Any] = {
        "role": node.role if node is not None else ROLE_WRITER,
        "node": node.to_json() if node is not None else None,
        "replication": node.replication() if node is not None else None,
        "warnings": [],
        "status": st.status,
        "store": st.state,
        "reason": st.reason or None,
        "summary": st.summary,
        "online": online,
        "last_backup": {FULL: None, INCREMENTAL: None},
        "backup_sessions_open": 0,
        "log": None,
        "crl": None,
        "archive": None,
        "errors": [],
    }
    if archiver is not None:
        a = archiver.status()
        body["archive"] = {k: a.get(k) for k in ("state", "lag_seconds", "lag_bytes", "lag_generations",
                                                 "last_shipped_at", "last_error")}
        body["archive"]["lag_s"] = a.get("lag_seconds")  # HA-CONTRACT's name for it
        if a.get("state") in ("behind", "stopped") and st.status == "ok":
            # as GET /health says it (issue 13): an archive far behind or stopped is said loudly
            body["status"], body["reason"] = "degraded", f"archive {a.get('state')}"
    if backup_manager is not None and hasattr(backup_manager, "status"):
        body["backup_sessions_open"] = 1 if backup_manager.status() is not None else 0
    body["warnings"] = _warnings(body, st, multi_node=bool(node is not None and node.multi_node))
    if store is None:
        return body
    # Each part on its own: a store that cannot answer one read (failed, damaged) still reports the rest.
    try:
        last = last_backups(store)
        body["last_backup"] = {k: (v.to_json() if v is not None else None) for k, v in last.items()}
        gens, since = log_on_disk(store, last)
        body["log"] = {"generations": gens, "bytes_since_backup": since}
    except _READ_ERRORS as e:
        body["errors"].append(f"backup history: {e}")
    try:
        c = (crl or CRLCache()).get(store)
        body["crl"] = c.to_json() if c is not None else None
    except _READ_ERRORS as e:
        body["errors"].append(f"CRL: {e}")
    return body


def role_probe(authority: Any, node: Any, *, online: bool, want: str) -> tuple[bool, dict[str, Any]]:
    """``GET /v1/health/writer`` (``want`` writer) and ``/v1/health/standby``: whether this node has that role and
    is healthy (online, store not failed), and a small body saying why (Patroni's ``/primary`` and ``/replica``:
    a load balancer's check, so it reads no history, only the role and the store's state).
    """
    st = StoreState.of(getattr(authority, "store", None))
    role = node.role if node is not None else ROLE_WRITER
    body: dict[str, Any] = {"role": role, "status": st.status, "store": st.state, "online": online,
                            "node": node.to_json() if node is not None else None}
    ok = role == want and online and st.status != "failed"
    if want == ROLE_WRITER and ok and node is not None and not node.lease_fresh:
        ok = False  # issue 14: its lease is older than the lease time; another node may hold it now
        body["lease"] = "stale"
    if want == ROLE_STANDBY and ok and node is not None and not node.multi_node:
        ok = False  # a lone SQLite home is never anybody's standby
    return ok, body


def _warnings(body: dict[str, Any], st: StoreState, *, multi_node: bool) -> list[str]:
    """What an operator must act on, one line each (issue 14: asynchronous replication is said loudly; a SQLite
    home's "nothing replicates it" stays in ``replication``: one node is what its operator chose)."""
    out: list[str] = []
    rep = body.get("replication") or {}
    if rep.get("warning") and multi_node:
        out.append(str(rep["warning"]))
    node = body.get("node") or {}
    writer = node.get("writer") or {}
    if node.get("role") == "standby" and not writer.get("holder"):
        out.append("no writer holds the lease: writes are refused until a node takes it")
    if writer.get("error"):
        out.append(f"the writer lease cannot be read: {writer['error']}")
    if st.degraded:
        out.append(f"store {st.state}")
    arc = body.get("archive") or {}
    if arc.get("state") in ("behind", "stopped"):
        out.append(f"archive {arc['state']}: {arc.get('lag_generations')} generation(s) not archived")
    return out
