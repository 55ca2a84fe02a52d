"""The service's audit log: one JSON line per administrative call (who, what, when, outcome).

Spec §1.6 "Auditing": AD CS audits ServerControl (filter bit 0x1) and backup calls (bit 0x2); we audit
every registered operation whose ``audit`` flag is set, refusals included.

Rotation: the service reopens the file on SIGHUP (:meth:`AuditLog.reopen`), so logrotate can rename it
and signal (``postrotate kill -HUP <pid>``); no record is lost across the switch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .auth import Principal


class AuditLog:
    """Append-only JSON lines file; each record is one ``write`` on an ``O_APPEND`` descriptor.

    :param path: the log file (created 0600 if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(
        self,
        principal: Principal,
        operation: str,
        method: str,
        path: str,
        status: int,
        error: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one record.

        :param principal: who called.
        :param operation: the operation id.
        :param method: HTTP method.
        :param path: request path.
        :param status: HTTP status answered.
        :param error: the error body (``CertSrvError.to_json()``) when the call failed.
        :param details: what the call touched (request id, serial, flags ...).
        """
        if error is None:
            outcome = "ok"
        elif status == 403:
            outcome = "denied"
        else:
            outcome = "error"
        rec: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "who": principal.ident,
            "kind": principal.kind,
            "roles": sorted(principal.roles),
            "operation": operation,
            "method": method,
            "path": path,
            "outcome": outcome,
            "status": status,
        }
        if principal.kind == "unix":
            rec["uid"], rec["gid"] = principal.uid, principal.gid
        elif principal.kind == "tls":
            rec["cert_sha256"] = principal.cert_sha256
        if details:
            rec["details"] = details
        if error is not None:
            rec["hresult"] = error.get("hresult_hex")
            rec["error"] = error.get("name")
            rec["message"] = error.get("message")
        line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            if self._fd >= 0:
                try:
                    os.write(self._fd, line)
                except OSError as e:
                    # The call already happened (a write may be committed): its answer must not turn into
                    # a failure because the audit line could not be written (issue 10: full disk).
                    logging.getLogger("pycertsrv.service").error("audit record lost (%s): %s", e, line.decode())

    def reopen(self) -> None:
        """Open the path again (SIGHUP after logrotate renamed the file): later records go to a new file.

        The old descriptor is fsynced and closed only once the new one is open, so no record is lost
        and a failure (e.g. the directory is now read-only) leaves records going to the old file.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with self._lock:
            old = self._fd
            if old < 0:  # closed (service stopping): stay closed
                os.close(fd)
                return
            self._fd = fd
        if old >= 0:
            with contextlib.suppress(OSError):
                os.fsync(old)
            os.close(old)

    def close(self) -> None:
        """fsync and close (idempotent)."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def read(path: Path) -> list[dict[str, Any]]:
    """All records of an audit log (for tests and tools)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
