"""The checkpoint: make the SQLite file durable up to the applied LSN and record it in ``system/edb.chk``.

Soft recovery replays from the checkpoint's generation; truncation never deletes a generation at or above it.
The file itself (format, read, write): :mod:`.chkfile`.
"""

from __future__ import annotations

import contextlib
import os

from ...errors import E_UNEXPECTED, ERROR_IO_DEVICE, CertSrvError, StorageError
from ...fsutil import fsync_file
from .. import logfile
from ..health import FAILED_DB_SYNC, disk_full_error, sync_failed_error
from .chkfile import CHECKPOINT_FILE, Checkpoint, read_checkpoint, write_checkpoint
from .dbfile import is_disk_full, side_file
from .state import EngineState

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "Checkpointing", "read_checkpoint", "write_checkpoint"]

class Checkpointing(EngineState):
    """The store's checkpoint (a part of :class:`~pycertsrv.store.sqlite.engine.Store`)."""

    def checkpoint(self) -> Checkpoint:
        """Make SQLite durable up to the applied LSN and record that position in ``edb.chk``."""
        if self._closed:
            raise CertSrvError(E_UNEXPECTED, "store", "the database is closed")
        with self._apply_cond:
            while self._applying:  # a group commit is using the writer connection
                self._apply_cond.wait()
            assert self._writer is not None
            lsn = self._applied_lsn
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            try:
                # Never open+close the live database here: closing any descriptor drops SQLite's POSIX locks.
                os.fsync(self._database_fd())
                wal = side_file(self.db_path, "-wal")
                if wal.exists():
                    fsync_file(wal)
            except OSError as e:
                # fsyncgate: SQLite's pages may be lost; only a restart's replay from the log is trustworthy.
                self._fail_locked(FAILED_DB_SYNC, f"fsync of {self.db_path.name} failed: {e}")
                raise sync_failed_error("checkpoint", f"fsync of {self.db_path.name} failed: {e}",
                                        FAILED_DB_SYNC) from None
            cp = Checkpoint(lsn, self._generation_of(lsn + 1), logfile.now_us())
            try:
                write_checkpoint(self.checkpoint_path, cp, self.identity)
            except OSError as e:
                for tmp in self.system_dir.glob(f".{CHECKPOINT_FILE}.tmp-*"):  # atomic_write's leftover
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                what = f"cannot write {CHECKPOINT_FILE}: {e}"
                raise (disk_full_error("checkpoint", what) if is_disk_full(e)
                       else StorageError(ERROR_IO_DEVICE, "checkpoint", what)) from None
            self._cp = cp
        if self.options.circular_logging:
            self.truncate_logs(cp.generation)
        return cp

