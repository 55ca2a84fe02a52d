"""The service's archiving thread (issue 13): ship every closed generation, in order, never skip one.

- Rolls the current generation once it has held changes for ``timeout`` seconds (its own watermark
  records do not count as changes: otherwise every ship would cause the next roll).
- Ships generations above the watermark one by one; after each, the watermark is written through
  the store's transaction (a logged setting, see :mod:`pycertsrv.store.archivemark`), so a crash
  between the store and the watermark ships that generation again (identical bytes are accepted).
- A failure is retried with exponential backoff; an :class:`~.destination.ArchiveConflict` stops
  archiving (status ``stopped``) until the service restarts.
- Lag beyond ``max_lag_bytes``: status ``behind``, health degraded, an error in the log every minute.
  Issuance goes on; the store keeps every unshipped generation (see ``StoreOptions.archiving``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import JET_ERR_MISSING_LOG_FILE, CertSrvError, CorruptData
from ..store import archivemark, logfile
from .destination import ArchiveConflict, Destination, archive_name
from .settings import ArchiveSection

log = logging.getLogger("pycertsrv.archive")
LOUD_EVERY = 60.0  # seconds between repeated "far behind" errors in the log


class Shipper:
    """Ships a store's closed generations to a :class:`Destination`.

    :param store: the open store (the service's).
    :param section: the ``[archive]`` configuration.
    :param base: the home (relative ``dest`` paths are under it).
    """

    def __init__(self, store: Any, section: ArchiveSection, base: Path) -> None:
        self.store = store
        self.section = section
        self.destination = Destination(dest=section.dest, command=section.command,
                                       command_timeout=section.command_timeout, base=base)
        self._own: set[int] = set()  # LSNs of our own watermark records (not changes worth a roll)
        self._dirty_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failures = 0
        self._loud_at = 0.0
        self.stopped_reason: str | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_shipped: str | None = None
        self.last_shipped_at: float | None = None
        self.shipped = 0
        self.identical = 0
        self._status: dict[str, Any] = {}

    # ------------------------------------------------------------- thread

    @property
    def running(self) -> bool:
        """Whether the thread runs (a standby node stops it, and starts it again once it is the writer)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Shipper:
        """Run in a daemon thread until :meth:`stop` (again after a stop: issue 14, a node that became writer)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="certsrv-archive", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a running command is left to finish or be killed with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        poll = max(0.05, min(1.0, self.section.timeout / 4))
        cap = min(30.0, max(1.0, self.section.timeout))
        while not self._stop.is_set():
            delay = poll
            try:
                self.step()
                self._failures = 0
            except ArchiveConflict as e:
                self._error(str(e))
                self.stopped_reason = str(e)
                log.error("archiving STOPPED: %s", e)
                self._refresh()
                return
            except (CertSrvError, OSError) as e:
                self._failures += 1
                delay = min(cap, 0.2 * (2 ** min(self._failures, 10)))
                self._error(str(e))
                log.warning("archive: %s (attempt %d; retrying in %.1fs; nothing is skipped or deleted)",
                            e, self._failures, delay)
            except Exception as e:
                self._failures += 1
                delay = cap
                self._error(f"unexpected: {e!r}")
                log.exception("archive: unexpected error (retrying)")
            self._refresh()
            end = time.monotonic() + delay
            while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
                self._stop.wait(min(poll, left))
                if self._failures:
                    # While backing off, generations still close every ``timeout`` (they wait on disk).
                    with contextlib.suppress(CertSrvError, OSError):
                        self._roll_if_due()

    def _error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()

    # ------------------------------------------------------------- one pass

    def _write(self, name: str, value: str) -> None:
        with self.store.transaction() as tx:
            tx.put("setting", {"name": name, "value": value})
        if tx.lsn is not None:
            self._own.add(tx.lsn)

    def _marks(self) -> archivemark.Marks:
        marks = archivemark.read_marks(self.store)
        if marks.lineage is None:
            # A CA created before archiving existed: its lineage starts at the oldest generation present.
            present = [g.generation for g in self.store.generations()]
            start = min(present) if present else self.store.current_generation
            self._write(archivemark.SETTING_LINEAGE_START, str(start))
            self._write(archivemark.SETTING_LINEAGE, archivemark.new_lineage())
            marks = archivemark.read_marks(self.store)
        return marks

    def step(self) -> None:
        """Ship what is closed, then roll the current generation when its changes are ``timeout`` old."""
        marks = self._marks()
        assert marks.lineage is not None
        self._roll_if_due()
        current = self.store.current_generation
        present = {g.generation for g in self.store.generations()}
        for g in range(marks.watermark + 1, current):
            if g not in present:
                # Never skip one: the chain would break silently for every later restore.
                raise CorruptData(JET_ERR_MISSING_LOG_FILE, logfile.log_name(g),
                                  f"generation {g:08X} is not archived and no longer kept by the store; "
                                  "archiving cannot go on past it: take a full backup, then restart the service")
            rel = archive_name(self.store.identity, marks.lineage, logfile.log_name(g))
            stream = self.store.open_generation(g)
            try:
                how = self.destination.put_stream(stream, rel)
            finally:
                stream.close()
            self._write(archivemark.SETTING_WATERMARK, f"{marks.lineage}:{g}")
            self.shipped += 1
            if how == "identical":
                self.identical += 1
                log.info("archive: %s was already archived with identical bytes (accepted)", rel)
            self.last_shipped, self.last_shipped_at = rel, time.time()
            self._failures = 0
            self._refresh()
            if self._stop.is_set():
                return

    def _roll_if_due(self) -> None:
        # Rolled even while shipping fails: generations accumulate (and wait on disk) instead of one growing.
        gen, first, appended = self.store.log_position
        own = sum(1 for n in self._own if first <= n <= appended)
        self._own = {n for n in self._own if n >= first}
        if appended - first + 1 <= own:
            self._dirty_since = None
            return
        now = time.monotonic()
        if self._dirty_since is None:
            self._dirty_since = now
        elif now - self._dirty_since >= self.section.timeout:
            if self.store.current_generation == gen:  # not rolled meanwhile (size limit, a backup)
                self.store.roll_log()
            self._dirty_since = None

    # ------------------------------------------------------------- status

    def _refresh(self) -> None:
        try:
            st = self._compute()
        except (CertSrvError, OSError) as e:
            st = dict(self._status, error=str(e))
        with self._lock:
            self._status = st

    def _compute(self) -> dict[str, Any]:
        marks = archivemark.read_marks(self.store)
        gen, first, appended = self.store.log_position
        present = {g.generation: g for g in self.store.generations()}
        pending = [g for g in present if marks.watermark < g < gen]
        lag_bytes = sum(present[g].size for g in pending)
        dirty = appended - first + 1 > sum(1 for n in self._own if first <= n <= appended)
        now = time.time()
        lag_s = 0.0
        if pending:
            lag_s = max(0.0, now - present[pending[0]].created_us / 1e6)
        elif dirty and self._dirty_since is not None:
            lag_s = time.monotonic() - self._dirty_since
        behind = lag_bytes > self.section.max_lag_bytes
        if behind and time.monotonic() - self._loud_at >= LOUD_EVERY:
            self._loud_at = time.monotonic()
            log.error("archive is FAR BEHIND: %d generation(s), %d bytes not archived (max_lag_bytes %d); "
                      "issuance goes on and nothing unarchived is deleted; last error: %s",
                      len(pending), lag_bytes, self.section.max_lag_bytes, self.last_error)
        if self.stopped_reason is not None:
            state = "stopped"
        elif behind:
            state = "behind"
        elif self._failures:
            state = "retrying"
        else:
            state = "ok"
        return {
            "enabled": True, "state": state, "destination": self.destination.describe(),
            "timeout": self.section.timeout, "lineage": marks.lineage, "lineage_start": marks.start,
            "watermark": marks.watermark,
            "watermark_name": logfile.log_name(marks.watermark) if marks.watermark >= marks.start else None,
            "current_generation": gen, "lag_generations": len(pending) + (1 if dirty else 0),
            "lag_bytes": lag_bytes, "lag_seconds": round(lag_s, 3), "max_lag_bytes": self.section.max_lag_bytes,
            "behind": behind, "shipped": self.shipped, "identical": self.identical,
            "last_shipped": self.last_shipped, "last_shipped_at": _iso(self.last_shipped_at),
            "last_error": self.last_error, "last_error_at": _iso(self.last_error_at),
            "stopped": self.stopped_reason,
        }

    def status(self) -> dict[str, Any]:
        """The last computed status (cheap; the thread refreshes it every pass)."""
        with self._lock:
            if not self._status:
                self._status = self._compute()
            return dict(self._status)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def shipper_for(authority: Any, config: Any, home: Path) -> Shipper | None:
    """The service's shipper when ``[archive]`` is configured (None otherwise), not yet started."""
    section: ArchiveSection | None = getattr(config, "archive", None)
    store = getattr(authority, "store", None)
    if section is None or store is None:
        return None
    log.info("archiving closed log generations to %s (timeout %gs)",
             section.dest or f"command {section.command!r}", section.timeout)
    return Shipper(store, section, home)
