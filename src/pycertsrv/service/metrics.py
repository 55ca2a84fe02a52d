"""Prometheus metrics of one service: ``/metrics`` in the text exposition format, on the listener that
``[metrics] listen`` names (off by default: the series reveal activity and backup times).

Cheap by construction, no polling thread:

- counters and histograms are updated at the event (the Authority and its GroupCommitter call
  :class:`ServiceMetrics` as their :class:`~pycertsrv.ca.observe.CAObserver`);
- gauges are computed when scraped, by :class:`_StateCollector`, from the store and the session state
  (:mod:`pycertsrv.service.health`: a few one-row reads and a directory listing).

Each service has its own ``CollectorRegistry`` (not the global one), so several services in one process
(tests, embedding) keep separate series.

Series (prefix ``certsrv_``):

=========================================  ========  ==========================================
name                                       type      labels / meaning
=========================================  ========  ==========================================
requests_total                             counter   disposition, template: requests that reached
                                                     a disposition (submit, issue, deny, resubmit)
issuance_seconds                           histogram template: call start to durable (issued only)
commit_batch_size                          histogram changes per group commit (one log record)
log_generations                            gauge     redo-log generations on disk
log_bytes_since_backup                     gauge     log bytes not in any recorded set
backup_last_timestamp_seconds              gauge     type=full|incremental: when the set ended
backup_last_size_bytes                     gauge     type: bytes the set's session sent
backup_last_duration_seconds               gauge     type: Prepare to End
backup_sessions_open                       gauge     0 or 1 (spec §2.2: one backup at a time)
crl_next_update_timestamp_seconds          gauge     the newest CRL's nextUpdate
store_degraded                             gauge     state, reason: 1 while degraded or failed
role                                       gauge     role="writer": 1 (standbys: issue 14)
archive_lag_seconds / _bytes / _generations gauge    log not yet archived (only with [archive], issue 13)
archive_state                              gauge     state=ok|retrying|behind|stopped: 1 for the current one
service_online                             gauge     IsServerOnline
=========================================  ========  ==========================================
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..spec import FULL, INCREMENTAL
from .health import ROLE_STANDBY, ROLE_WRITER, CRLCache, StoreState, last_backups, log_on_disk

log = logging.getLogger("pycertsrv.service")

# Issuance is parse + policy + one signature + one group-committed fsync: milliseconds, up to seconds
# under load or on a slow disk.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# GroupCommitter.MAX_BATCH is 256.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BACKUP_TYPES = (FULL, INCREMENTAL)
# The classic text format every Prometheus 2.x reads; our names are all legacy-valid ([a-zA-Z_:][a-zA-Z0-9_:]*),
# so generate_latest's output is the same in 0.0.4 and 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    """The series of one service; also the Authority's observer.

    :param authority: the open Authority (store read at scrape).
    :param backup_manager: returns the service's BackupManager or None (created after the routes).
    :param online: returns IsServerOnline's answer.
    """

    def __init__(self, authority: Any, *, backup_manager: Callable[[], Any] = lambda: None,
                 online: Callable[[], bool] = lambda: True, archiver: Callable[[], Any] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("certsrv_requests", "Requests that reached a disposition (submit, issue, deny, "
                                "resubmit), by disposition and template", ["disposition", "template"],
                                registry=self.registry)
        self.issuance = Histogram("certsrv_issuance_seconds", "Seconds from a call's start to its certificate "
                                  "being durable (issued requests only)", ["template"], buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self.batches = Histogram("certsrv_commit_batch_size", "State changes per group commit (one redo-log "
                                 "record, one fsync)", buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(authority, backup_manager, online, archiver))
        # The labelled children, looked up once (``labels()`` validates and locks at every call; issue 15: this
        # runs for every issuance, in the writer). Dispositions and templates are few: the dicts stay small.
        self._requests: dict[tuple[str, str], Any] = {}
        self._issuance: dict[str, Any] = {}

    # CAObserver: called in the worker thread that made the write durable; prometheus_client is thread-safe.
    def request_resolved(self, disposition: str, template: str, seconds: float) -> None:
        """Count a request's disposition; time an issuance."""
        count = self._requests.get((disposition, template))
        if count is None:
            count = self._requests[disposition, template] = self.requests.labels(disposition, template)
        count.inc()
        if disposition == "issued":
            timer = self._issuance.get(template)
            if timer is None:
                timer = self._issuance[template] = self.issuance.labels(template)
            timer.observe(seconds)

    def batch_committed(self, size: int) -> None:
        """Record a group commit's size."""
        self.batches.observe(size)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (runs the gauges' reads)."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges computed at scrape from the store and the session state (no thread keeps them fresh)."""

    def __init__(self, authority: Any, backup_manager: Callable[[], Any], online: Callable[[], bool],
                 archiver: Callable[[], Any]) -> None:
        self._authority = authority
        self._archiver = archiver
        self._backup_manager = backup_manager
        self._online = online
        self._crl = CRLCache()
        self._lock = threading.Lock()  # the CRL cache; two scrapes at once are rare but possible

    def collect(self) -> Iterable[Metric]:
        store = getattr(self._authority, "store", None)
        role = GaugeMetricFamily("certsrv_role", "The service's role (1 for the role it has)", labels=["role"])
        now = ROLE_STANDBY if getattr(store, "role", ROLE_WRITER) == ROLE_STANDBY else ROLE_WRITER  # issue 14
        for r in (ROLE_WRITER, ROLE_STANDBY):
            role.add_metric([r], int(r == now))
        yield role
        yield GaugeMetricFamily("certsrv_service_online", "IsServerOnline (1: serving)", value=int(self._online()))
        mgr = self._backup_manager()
        open_ = 1 if mgr is not None and hasattr(mgr, "status") and mgr.status() is not None else 0
        yield GaugeMetricFamily("certsrv_backup_sessions_open", "Backup sessions open (at most one)", value=open_)
        st = StoreState.of(store)
        deg = GaugeMetricFamily("certsrv_store_degraded", "1 while the store is degraded or failed (state and "
                                "reason as labels); 0 when ok", labels=["state", "reason"])
        deg.add_metric([st.status, st.reason], 1 if st.degraded else 0)
        yield deg
        yield from self._archive()
        if store is None:
            return
        yield from self._backups(store)
        try:
            with self._lock:
                crl = self._crl.get(store)
        except Exception as e:  # a scrape must not fail as a whole: the other series still tell the state
            log.warning("metrics: cannot read the newest CRL: %s", e)
            crl = None
        if crl is not None and crl.next_update is not None:
            yield GaugeMetricFamily("certsrv_crl_next_update_timestamp_seconds", "nextUpdate of the newest CRL "
                                    "(Unix time)", value=crl.next_update.timestamp())

    def _archive(self) -> Iterable[Metric]:
        shipper = self._archiver()
        if shipper is None:
            return  # archiving off: no series (an absent lag is not a zero lag)
        try:
            st = shipper.status()  # the shipper's last computed status: cheap, its thread refreshes it
        except Exception as e:  # as for the store: the other series still tell the state
            log.warning("metrics: cannot read the archive status: %s", e)
            return
        for key, help_text in (("lag_seconds", "Age of the oldest log not yet archived (seconds)"),
                               ("lag_bytes", "Bytes of closed log generations not yet archived"),
                               ("lag_generations", "Log generations not yet archived (the open one included "
                                                   "when it holds unshipped changes)")):
            if st.get(key) is not None:
                yield GaugeMetricFamily(f"certsrv_archive_{key}", help_text, value=float(st[key]))
        state = GaugeMetricFamily("certsrv_archive_state", "The archive's state (1 for the current one)",
                                  labels=["state"])
        state.add_metric([str(st.get("state", "unknown"))], 1)
        yield state

    def _backups(self, store: Any) -> Iterable[Metric]:
        try:
            last = last_backups(store)
            gens, since = log_on_disk(store, last)
        except Exception as e:  # as above: report it in the service log, export the rest
            log.warning("metrics: cannot read the backup history: %s", e)
            return
        yield GaugeMetricFamily("certsrv_log_generations", "Redo-log generations on disk", value=gens)
        yield GaugeMetricFamily("certsrv_log_bytes_since_backup", "Bytes of redo log written since the newest "
                                "recorded backup (lost with the disk until the next one)", value=since)
        when = GaugeMetricFamily("certsrv_backup_last_timestamp_seconds", "When the newest recorded set of this "
                                 "type ended (Unix time)", labels=["type"])
        size = GaugeMetricFamily("certsrv_backup_last_size_bytes", "Bytes the newest recorded set of this type "
                                 "sent", labels=["type"])
        took = GaugeMetricFamily("certsrv_backup_last_duration_seconds", "Seconds the newest recorded set of "
                                 "this type took, Prepare to End", labels=["type"])
        for kind in BACKUP_TYPES:
            b = last.get(kind)
            if b is None:
                continue  # absent, not 0: "never" must not look like 1970 to an age alert (absent() catches it)
            if b.ended is not None:
                when.add_metric([kind], b.ended.timestamp())
            if b.size is not None:
                size.add_metric([kind], b.size)
            if b.duration is not None:
                took.add_metric([kind], b.duration)
        yield when
        yield size
        yield took


# ---------------------------------------------------------------- the listener


def metrics_app(metrics: ServiceMetrics) -> web.Application:
    """The metrics listener's application: ``GET /metrics`` only (no API route is reachable through it)."""

    async def handle(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.exposition)  # the gauges read the store: not on the loop
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
