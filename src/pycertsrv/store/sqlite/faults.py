"""The store's fault handling, a part of :class:`~pycertsrv.store.sqlite.engine.Store`: the degraded state after
a failed apply (disk full) and its background retry, the failed state after a failed sync, the health
snapshot, reads of committed but unapplied rows, and the report of damaged log records. The states and
what each means for writers, readers and operators are described in :mod:`.health`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import Any

from ...errors import E_UNEXPECTED, CertSrvError, StorageError
from .. import health as health_mod
from .. import logfile, schema
from ..health import DEGRADED_DISK_FULL, Health, disk_full_error
from .dbfile import is_disk_full
from .state import EngineState

log = logging.getLogger("pycertsrv.store")


class FaultHandling(EngineState):
    """The store's fault handling (its attributes are set in :class:`.state.EngineState`)."""

    def _report_damage(self, damage: list[dict[str, Any]]) -> None:
        """Damaged records below the applied LSN: report loudly, and require the next backup to be full
        (the incremental chain passes through the damaged generation). Marked once per damage found."""
        self.log_damage = list(damage)
        for d in damage:
            log.warning("log damage in %s at offset %d: record(s) LSN %d..%d, already applied, stepped over (%s); "
                        "the CA keeps serving; the next backup must be full", d["file"], d["offset"],
                        d["lsns"][0], d["lsns"][1], d["reason"])
        if any(d["file"] == logfile.log_name(self._gen) for d in damage):
            # Later records go to a new generation: a full backup (which starts at the generation of the
            # snapshot's next LSN) then never carries the damaged one, and the next start does not scan it.
            try:
                self.roll_log()
            except CertSrvError as e:
                log.warning("cannot start a new log generation after the damage: %s", e)
        known = {health_mod.damage_key(d) for d in health_mod.known_damage(self.system_dir)}
        new = [d for d in damage if health_mod.damage_key(d) not in known]
        if not new:
            return
        first = new[0]
        reason = (f"log damage in {first['file']} (record LSN {first['lsn']} at offset {first['offset']}, already "
                  "applied) breaks the chain of log generations for incremental backups")
        try:
            with self.transaction() as tx:
                tx.put("setting", {"name": health_mod.SETTING_REQUIRES_FULL, "value": "1"})
                tx.put("setting", {"name": health_mod.SETTING_REQUIRES_FULL_REASON, "value": reason})
            health_mod.record_damage(self.system_dir, new)
        except (CertSrvError, OSError) as e:  # reported again at the next start
            log.warning("cannot record the log damage (the next start reports it again): %s", e)

    def _check_writable(self) -> None:
        """Usable and not degraded; a degraded store first tries once more to apply what it holds."""
        self._check_usable()
        if self._degraded is not None and not self.retry_apply():
            state, detail = self._degraded, self._degraded_detail
            if state == DEGRADED_DISK_FULL:
                raise disk_full_error("store", f"store {state}: write refused, nothing was written ({detail})",
                                      degraded=True)
            raise StorageError(E_UNEXPECTED, "store", f"store {state}: write refused, nothing was written "
                               f"({detail}); the store retries by itself (see certsrv status)")

    def _fail_locked(self, state: str, error: str) -> None:
        """A sync failed: no write is accepted again by this process (``_apply_cond`` held)."""
        if self._failed is None:
            self._failed, self._failed_state = error, state
            self._state_since = logfile.us_to_datetime(logfile.now_us()).isoformat(timespec="seconds")
            log.error("store %s: %s; writes are refused until the service is restarted", state, error)

    def _degrade_locked(self, first: int, last: int, error: BaseException | None) -> None:
        """Records ``first..last`` are durable but could not be applied (``_apply_cond`` held)."""
        state = DEGRADED_DISK_FULL if error is not None and is_disk_full(error) else health_mod.DEGRADED_APPLY
        detail = (f"records LSN {first}..{last} are committed in the redo log but not yet applied: "
                  f"{error or 'interrupted while applying'}")
        if self._degraded is None:
            self._state_since = logfile.us_to_datetime(logfile.now_us()).isoformat(timespec="seconds")
            log.warning("store %s: %s; reads go on, writes are refused, the store retries every %.1fs",
                        state, detail, self.options.retry_interval)
        self._degraded, self._degraded_detail = state, detail
        if not self._closed and self._retry_thread is None:
            self._retry_stop.clear()
            self._retry_thread = threading.Thread(target=self._retry_loop, name="pycertsrv-store-retry", daemon=True)
            self._retry_thread.start()

    def _retry_loop(self) -> None:
        """Background: apply the committed records again until it works or the store closes."""
        while not self._retry_stop.wait(self.options.retry_interval):
            try:
                self.retry_apply()
            except Exception:  # never let the retry thread die silently while records wait
                log.exception("store: retrying the apply failed unexpectedly")
            with self._apply_cond:
                # Decided under the lock _degrade_locked holds: a store degraded again after this point
                # sees no retry thread and starts a new one.
                if self._closed or self._degraded is None:
                    self._retry_thread = None
                    return

    def retry_apply(self) -> bool:
        """Apply the committed records a degraded store holds; returns whether it is no longer degraded."""
        with self._apply_cond:
            while self._applying:
                self._apply_cond.wait()
            if self._degraded is None:
                return True
            if self._closed:
                return False
            if self._durable_lsn > self._applied_lsn:
                self._apply_locked()
            else:
                self._degraded, self._degraded_detail, self._state_since = None, "", None
            return self._degraded is None

    def health(self) -> Health:
        """The store's state for health and status displays (see :mod:`.health`)."""
        with self._apply_cond:
            if self._failed is not None:
                state, detail = self._failed_state, self._failed
            elif self._degraded is not None:
                state, detail = self._degraded, self._degraded_detail
            else:
                state, detail = health_mod.OK, ""
            unapplied = self._durable_lsn - self._applied_lsn if state != health_mod.OK else 0
            lsns = (self._applied_lsn + 1, self._durable_lsn) if unapplied > 0 else None
            since = self._state_since
        full: str | None = None
        with contextlib.suppress(CertSrvError, sqlite3.Error):
            if self.get("setting", health_mod.SETTING_REQUIRES_FULL) is not None:
                why = self.get("setting", health_mod.SETTING_REQUIRES_FULL_REASON)
                full = str(why["value"]) if why else "the database was restored since the last full backup"
        return Health(state, detail, since, max(unapplied, 0), lsns, list(self.log_damage), full)

    def _unapplied_row(self, table: str, key: tuple[Any, ...]) -> tuple[bool, dict[str, Any] | None]:
        """The newest image of a row among committed, unapplied records (degraded store): ``(found, row)``."""
        t = schema.table(table)
        with self._apply_cond:
            records = [self._pending[n] for n in sorted(self._pending) if n <= self._durable_lsn]
        found, row = False, None
        for ops in records:
            for tname, kind, values in ops:
                if tname != table:
                    continue
                k = tuple(values[i] for i in t.key_positions) if kind == "p" else tuple(values)
                if k == key:
                    found, row = True, (dict(zip(t.column_names, values)) if kind == "p" else None)
        return found, row
