"""A backup session driven in process, without the service (tests, benchmarks, the local ``certsrv backup``)."""

from __future__ import annotations

from typing import Any

from ..errors import (
    E_INVALIDARG,
    CertSrvError,
    InvalidArgument,
)
from ..spec import CSBACKUP_TYPE_FULL, CSBACKUP_TYPE_LOGS_ONLY, FULL, INCREMENTAL
from .session import BackupManager


class LocalSession:
    """A backup session driven in process (same methods as the network ``BackupSession``).

    :param manager: the CA's manager.
    :param kind: ``"full"`` or ``"incremental"``.
    :param principal: who the session belongs to.
    """

    def __init__(self, manager: BackupManager, kind: str = FULL, principal: str = "local") -> None:
        if kind not in (FULL, INCREMENTAL):
            raise InvalidArgument(E_INVALIDARG, "backup", f"unknown backup kind {kind!r}")
        self.manager = manager
        self.principal = principal
        self.handle = manager.prepare(principal, 0, CSBACKUP_TYPE_FULL if kind == FULL else CSBACKUP_TYPE_LOGS_ONLY)
        info = manager.info(self.handle, principal)
        self.kind: str = info["kind"]
        self.ca_name: str = info["ca_name"]
        self.identity: str = info["identity"]
        self.ended = False
        self.end_result: dict[str, Any] | None = None
        self.lineage: list[dict[str, int]] | None = None

    def database_locations(self) -> list[str]:
        """RestoreGetDatabaseLocations."""
        return self.manager.database_locations(self.handle, self.principal)

    def database_names(self) -> list[str]:
        """GetDatabaseNames."""
        return self.manager.database_names(self.handle, self.principal)

    def backup_logs(self) -> list[str]:
        """GetBackupLogs (and the epoch lineage of the generations listed, issue 14)."""
        names = self.manager.backup_logs(self.handle, self.principal)
        self.lineage = self.manager.lineage(self.handle, self.principal)
        return names

    def dynamic_files(self) -> list[str]:
        """GetDynamicFileList."""
        return self.manager.dynamic_files(self.handle, self.principal)

    def open_file(self, name: str, hint: int = 0) -> int:
        """OpenFile; returns the size."""
        return self.manager.open_file(self.handle, name, self.principal)

    def read(self, n: int) -> bytes:
        """Read the next chunk (b"" at the end)."""
        return self.manager.read(self.handle, n, self.principal)

    def close_file(self) -> None:
        """Close the open file."""
        self.manager.close_file(self.handle, self.principal)

    def truncate_logs(self) -> list[int]:
        """TruncateLogs; returns the generations deleted."""
        return self.manager.truncate_logs(self.handle, self.principal)

    def end(self) -> dict[str, Any]:
        """End the session (a second End fails with E_UNEXPECTED, as on the server)."""
        self.ended = True
        self.end_result = self.manager.end(self.handle, self.principal)
        return self.end_result

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.ended:
            try:
                self.end()
            except CertSrvError:
                if exc[0] is None:
                    raise
