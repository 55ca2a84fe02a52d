"""The commit log: append records to the open generation, group commit (sync + apply), roll, list, truncate.

A record is appended under the write lock, then made durable by one ``fdatasync`` shared by every committer
waiting (group commit) and applied to SQLite in one transaction per batch (group apply); see
:meth:`CommitLog._commit_wait`. Generations are ``edbXXXXXXXX.log`` files (:mod:`..logfile`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading

from ...errors import E_INVALIDARG, ERROR_IO_DEVICE, CertSrvError, InvalidArgument, StorageError
from ...fsutil import fsync_dir
from .. import archivemark, logfile, schema
from ..health import FAILED_SYNC, disk_full_error, sync_failed_error
from ..interface import Generation
from ..transaction import Transaction
from .checkpoint import Checkpoint
from .dbfile import is_disk_full
from .replay import Batcher, encode_payload, set_applied
from .state import EngineState

log = logging.getLogger("pycertsrv.store")


class CommitLog(EngineState):
    """The store's redo log (a part of :class:`~pycertsrv.store.sqlite.engine.Store`)."""


    def _log_locked(self, tx: Transaction) -> int:
        """Append ``tx`` as the next record (the write lock is held); returns its LSN."""
        self._check_writable()
        lsn = self._next_lsn
        try:
            payload = encode_payload(tx.ops)
        except (ValueError, TypeError) as e:  # nothing is logged: the store stays usable
            raise InvalidArgument(E_INVALIDARG, "store", f"cannot log the transaction: {e}") from None
        rec = logfile.encode_record(lsn, logfile.now_us(), payload)
        if self._gen_size + len(rec) > self.options.log_size and self._gen_size > logfile.HEADER_SIZE:
            self._roll_locked()
        # Queued before it can become durable: whichever committer applies next takes it.
        self._pending[lsn] = tx.ops
        try:
            self._append(rec)
        except BaseException:
            del self._pending[lsn]
            raise
        self._next_lsn = lsn + 1
        self._appended_lsn = lsn
        tx.lsn = lsn
        return lsn

    def _append(self, rec: bytes) -> None:
        before = self._gen_size
        try:
            done = os.pwrite(self._fd, rec, before)
            if done != len(rec):  # a short write (disk full): finish it or fail below
                view = memoryview(rec)
                while done < len(rec):
                    done += os.pwrite(self._fd, view[done:], before + done)
        except OSError as e:
            # Leave no partial frame behind: the next record must follow a whole one (and one left by a
            # failed truncate is overwritten by the next append, or cut at the next start as a torn tail).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            what = f"cannot append to {logfile.log_name(self._gen)}: {e}; nothing was written"
            if is_disk_full(e):
                raise disk_full_error("store", what) from None
            raise StorageError(ERROR_IO_DEVICE, "store", what + "; check the disk and the service log") from None
        self._gen_size = before + len(rec)

    def _commit_wait(self, lsn: int) -> bool:
        """Return once ``lsn`` is durable in the log and applied to SQLite (group commit, group apply).

        Returns True when applied, False when durable but not applied because the store is degraded
        (the record is committed: the log holds it, and the store applies it by itself later). Raises
        :class:`StorageError` when the record was not made durable (the log sync failed).

        Two stages, each run by one waiting committer at a time and both at once: the *syncer*
        fdatasyncs the log for every record appended so far; the *applier* applies every durable,
        unapplied record in ONE SQLite transaction that also stores the new applied LSN (so each
        logged transaction stays all-or-nothing in SQLite). While one batch is applied the next one
        is being synced, so the fsync wait overlaps the apply's CPU work instead of adding to it.
        A committer takes a free stage it can serve, else sleeps on its own gate; whoever finishes
        a stage opens the gates of the committers it completed and of one committer for each stage
        that has work left (one wakeup per commit and per batch, no thundering herd).
        """
        cond = self._apply_cond
        applied = True
        with cond:
            while self._applied_lsn < lsn:
                durable = self._durable_lsn >= lsn
                if durable and self._degraded is not None and not self._applying:
                    applied = False  # committed: the log holds it; applied later (retry thread, next write)
                    break
                if not durable and self._failed is not None:
                    # fsyncgate: never answer this write as durable, whatever a retried sync would say.
                    raise sync_failed_error("store", f"{self._failed}; this write was NOT made durable and "
                                            "may or may not be present after the restart's recovery",
                                            self._failed_state)
                if not durable:
                    if not self._syncing:
                        self._sync_locked()
                        continue
                elif not self._applying:
                    self._apply_locked()
                    continue
                gate = threading.Lock()
                gate.acquire()
                self._waiters.append((lsn, gate))
                cond.release()
                try:
                    gate.acquire()  # opened by a committer that finished a stage
                finally:
                    cond.acquire()
        cp = self._cp
        if applied and self.options.checkpoint_records and (
                cp is None or lsn - cp.lsn >= self.options.checkpoint_records):
            with cond:  # re-read: another committer may have just checkpointed
                cp = self._cp
                due = cp is None or lsn - cp.lsn >= self.options.checkpoint_records
            if due:
                try:
                    self.checkpoint()
                except (CertSrvError, OSError, sqlite3.Error) as e:
                    # This commit is durable and applied: its writer is answered success. The checkpoint
                    # is only an optimisation of the next start's replay; a later commit tries again.
                    log.warning("checkpoint failed (retried later; committed records are safe in the log): %s", e)
        return applied

    def _sync_locked(self) -> None:
        """The syncer stage (called and returning with ``_apply_cond`` held, released meanwhile)."""
        cond = self._apply_cond
        self._syncing = True
        target = self._appended_lsn  # every LSN up to it is fully written to the log
        error: str | None = None
        done = False
        cond.release()
        try:
            with self._fd_lock:  # a roll swaps the descriptor under this lock
                os.fdatasync(self._fd)
            done = True
        except (OSError, ValueError) as e:
            # After a failed fsync the page cache state is unknown (fsyncgate): stop writing.
            error = f"fdatasync of {logfile.log_name(self._gen)} failed: {e}"
        finally:
            cond.acquire()
            self._syncing = False
            if done:
                self._durable_lsn = max(self._durable_lsn, target)
            else:
                self._fail_locked(FAILED_SYNC, error or "interrupted while syncing the log")
            # No applier is woken: this committer's own LSN is now durable, it applies next if it can.
            self._wake_locked(apply=False)

    def _apply_locked(self) -> None:
        """The applier stage (called and returning with ``_apply_cond`` held, released meanwhile)."""
        cond = self._apply_cond
        self._applying = True
        first, last = self._applied_lsn + 1, self._durable_lsn
        # Kept in _pending until applied: a failed batch stays there (reads by key see it, a retry applies it).
        batch = [self._pending[n] for n in range(first, last + 1)]
        error: BaseException | None = None
        done = False
        cond.release()
        try:
            writer = self._writer
            assert writer is not None
            try:
                writer.execute("BEGIN")
                batcher = Batcher(writer)
                for ops in batch:
                    batcher.add(ops)
                batcher.flush()
                set_applied(writer, last)
                writer.commit()
                done = True
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    writer.rollback()
                error = e
        finally:
            cond.acquire()
            self._applying = False
            if done:
                for n in range(first, last + 1):
                    del self._pending[n]
                self._applied_lsn = last
                if self._degraded is not None:
                    log.info("store recovered: applied the committed records LSN %d..%d from the log; "
                             "accepting writes again (was %s since %s)", first, last, self._degraded,
                             self._state_since)
                    self._degraded, self._degraded_detail, self._state_since = None, "", None
            else:
                self._degrade_locked(first, last, error)
            self._wake_locked(apply=True)
            cond.notify_all()  # checkpoint() and readers waiting for the applied LSN

    def _wake_locked(self, *, apply: bool) -> None:
        """Open the gates of finished committers and of one committer per stage with work left."""
        if self._failed is not None or self._degraded is not None:
            for _, gate in self._waiters:
                gate.release()
            self._waiters = []
            return
        applied, durable = self._applied_lsn, self._durable_lsn
        need_apply = apply and not self._applying and durable > applied
        need_sync = not self._syncing and self._appended_lsn > durable
        keep: list[tuple[int, threading.Lock]] = []
        for w in self._waiters:
            n = w[0]
            if n <= applied:
                w[1].release()
            elif need_apply and n <= durable:
                w[1].release()
                need_apply = False
            elif need_sync and n > durable:
                w[1].release()
                need_sync = False
            else:
                keep.append(w)
        self._waiters = keep

    def _wait_applied_all(self) -> None:
        target = self._appended_lsn
        with self._apply_cond:
            while self._applied_lsn < target and self._failed is None and self._degraded is None:
                self._apply_cond.wait()

    def _next_id(self, table: str) -> int:
        t = schema.table(table)
        if len(t.key) != 1:
            raise InvalidArgument(None, "store", f"{table} has no single integer key")
        with self._write_lock:
            if table not in self._ids:
                self._wait_applied_all()
                cur = int(self.max_value(table, t.key[0]) or 0)
                with self._apply_cond:  # committed but unapplied rows (degraded store) hold ids too
                    pending = [ops for ops in self._pending.values()]
                for ops in pending:
                    for tname, kind, values in ops:
                        if tname == table and kind == "p":
                            cur = max(cur, int(values[t.key_positions[0]]))
                self._ids[table] = cur
            self._ids[table] += 1
            return self._ids[table]

    # ---------------------------------------------------------------- log management

    def roll_log(self) -> int:
        """Close the current generation (made durable) and start the next; returns the closed number."""
        self._check_usable()
        with self._write_lock:
            return self._roll_locked()

    def _roll_locked(self) -> int:
        closed = self._gen
        # Cut and sync outside _fd_lock (only a roll swaps the descriptor, and the write lock is held), so
        # a failure can take _apply_cond, which is taken before _fd_lock elsewhere (checkpoint).
        try:
            os.ftruncate(self._fd, self._gen_size)  # a closed generation ends at its last record
            os.fsync(self._fd)
        except OSError as e:
            with self._apply_cond:  # fsyncgate: the records appended so far may be lost
                self._fail_locked(FAILED_SYNC, f"fsync of {logfile.log_name(closed)} failed: {e}")
            raise sync_failed_error("store", f"fsync of {logfile.log_name(closed)} failed: {e}") from None
        # The swap runs under _fd_lock: a group-commit syncer outside the write lock must never see a
        # closed or -1 descriptor, and _generation_of must see (_gen, _gen_first) together.
        with self._fd_lock:
            header = logfile.LogHeader(closed + 1, bytes.fromhex(self.identity), logfile.now_us(), self._next_lsn,
                                       self.options.log_size)
            try:
                new, header = logfile.create_generation(self.log_dir, header)
            except OSError as e:
                # Nothing is lost: the closed generation is whole and synced; this write is refused.
                tmp = self.log_dir / (logfile.log_name(closed + 1) + ".tmp")
                with contextlib.suppress(OSError):
                    tmp.unlink()
                what = f"cannot start log generation {logfile.log_name(closed + 1)}: {e}; nothing was written"
                if is_disk_full(e):
                    raise disk_full_error("store", what) from None
                raise StorageError(ERROR_IO_DEVICE, "store", what) from None
            old_fd, self._fd = self._fd, os.open(new, os.O_WRONLY)
            os.close(old_fd)
            self._gen = closed + 1
            self._gen_first = self._next_lsn
            self._gen_created = header.created_us
            self._gen_size = logfile.HEADER_SIZE
        with self._apply_cond:
            self._durable_lsn = max(self._durable_lsn, self._appended_lsn)  # the fsync above covered them
        path = self.log_dir / logfile.log_name(closed)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o400)  # closed generations are immutable (and private: issue 9)
        return closed

    def generations(self) -> list[Generation]:
        """Every generation in the log directory with its LSN range, oldest first."""
        self._check_usable()
        with self._write_lock:
            gens = logfile.list_generations(self.log_dir)
            headers = {g: logfile.read_header(p) for g, p in gens.items()}
            out: list[Generation] = []
            nums = sorted(headers)
            for i, g in enumerate(nums):
                h = headers[g]
                if g == self._gen:
                    last = self._appended_lsn
                    size = self._gen_size
                else:
                    nxt = headers[nums[i + 1]].first_lsn if i + 1 < len(nums) else self._gen_first
                    last = nxt - 1
                    size = gens[g].stat().st_size
                out.append(Generation(g, h.first_lsn, last, h.created_us, size, g != self._gen))
            return out

    def log_space(self) -> dict[int, int]:
        """Bytes each kept generation takes in storage now (its file, preallocated room included), by number.

        Readable in every state (health and metrics report it for a failed store too).
        """
        out: dict[int, int] = {}
        for g, path in logfile.list_generations(self.log_dir).items():
            with contextlib.suppress(FileNotFoundError):  # truncated meanwhile
                out[g] = path.stat().st_size
        return out

    @property
    def current_generation(self) -> int:
        """Number of the generation being written."""
        return self._gen

    @property
    def log_position(self) -> tuple[int, int, int]:
        """``(generation being written, its first LSN, last LSN appended)``, read together."""
        with self._fd_lock:
            return self._gen, self._gen_first, self._appended_lsn

    @property
    def applied_lsn(self) -> int:
        """Highest LSN applied to SQLite."""
        return self._applied_lsn

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint last written."""
        return self._cp

    @property
    def circular_logging(self) -> bool:
        """Whether generations below the checkpoint are deleted automatically."""
        return self.options.circular_logging

    def _generation_of(self, lsn: int) -> int:
        """The generation that holds (or will hold) ``lsn``."""
        with self._fd_lock:  # a roll updates the pair under this lock
            gen, first = self._gen, self._gen_first
        if lsn >= first:
            return gen
        gens = logfile.list_generations(self.log_dir)
        best = self._gen
        for g, p in sorted(gens.items(), reverse=True):
            if logfile.read_header(p).first_lsn <= lsn:
                return g
            best = g
        return best
    def truncate_logs(self, below: int) -> list[int]:
        """Delete generations numbered below ``below``; returns the numbers deleted.

        Refused when ``below`` is past the checkpoint's generation: those logs are still
        needed for crash recovery.
        """
        self._check_usable()
        cp = self._cp
        if cp is None or below > cp.generation:
            raise InvalidArgument(
                E_INVALIDARG, "truncate",
                f"generation {below:08X} is past the checkpoint's "
                f"({(cp.generation if cp else 0):08X}); those logs are needed for recovery")
        present = logfile.list_generations(self.log_dir)
        if self.options.archiving and present:
            # Issue 13: a generation goes only when archived AND no longer needed by recovery.
            below = min(below, archivemark.keep_floor(self, min(present)))
        deleted: list[int] = []
        for g, p in present.items():
            if g < below and g != self._gen:
                p.unlink(missing_ok=True)  # concurrent checkpoints (circular logging) may race here
                deleted.append(g)
        if deleted:
            fsync_dir(self.log_dir)
        return deleted
