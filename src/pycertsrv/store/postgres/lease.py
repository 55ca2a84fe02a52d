"""The writer lease with a fencing epoch (issue 12: one writer per CA, the database refuses split brain).

``writer_lease`` has one row: ``epoch``, ``holder``, ``renewed_us``. Taking the lease raises the epoch;
every commit transaction of the writer runs ``UPDATE writer_lease ... WHERE epoch = <mine>`` first and
rolls back when no row matched. A writer whose lease was taken over therefore cannot commit, whatever
its clock says: the row lock of that UPDATE orders it against the takeover's own UPDATE, which waits
for an in-flight commit and then raises the epoch, after which the old writer's next commit finds no
row. A lease not renewed within ``ttl`` seconds may be taken by another node; a live one is refused.

Issue 14 (several nodes): the lease row also carries the endpoints its holder advertises (a JSON list), so a
standby can name the writer; and a writer that lost its connection (a PostgreSQL failover) re-takes its OWN
lease (``take(own=...)``: still its epoch and holder, however old) without waiting for it to expire.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ERROR_BUSY, ERROR_INVALID_STATE, Conflict, StorageError
from ..claims import node_name as holder_name  # who holds a lease, for error lines and status

# The database server's clock, the one clock every node shares: lease ages are measured by it, so a node whose
# own clock runs ahead never takes a live lease (and one behind never keeps a dead one alive).
NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"

LEASE_TTL = 10.0  # issue 14: the default lease time is at most 10 s (a standby takes over within it)


@dataclass(frozen=True)
class Lease:
    """A lease taken: the epoch to check at every commit, and who holds it."""

    epoch: int
    holder: str


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` (``host:pid``) is a process of this host that no longer exists (a crashed writer
    restarting here need not wait for its old lease to expire: the dead process can commit nothing)."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def take(cur: Any, subject: str, now_us: int, ttl: float, *, takeover: bool = False, own: Lease | None = None,
         endpoints: Sequence[str] = ()) -> Lease:
    """Take the lease (epoch + 1) in the caller's transaction; refuse a live lease of another holder.

    :param takeover: take it even when live (an operator's failover; the old writer is fenced).
    :param own: the lease this store held before it lost its connection: when the row still holds exactly it
        (nobody took it meanwhile), it is re-taken however recently it was renewed (issue 14: a writer goes on
        after a PostgreSQL failover). Another object of this process is NOT "own": its epoch differs.
    :param endpoints: where the new holder's service listens (:func:`advertise`).
    """
    row = cur.execute(f"SELECT epoch, holder, renewed_us, {NOW_US} FROM writer_lease WHERE id = 1 FOR UPDATE"
                      ).fetchone()
    epoch, holder, renewed, server_now = int(row[0]), str(row[1]), int(row[2]), int(row[3])
    age = (server_now - renewed) / 1e6  # by the server's clock (NOW_US); ``now_us`` is kept for the caller's log
    mine = own is not None and own.epoch == epoch and own.holder == holder
    if holder and age < ttl and not takeover and not mine and not _dead_here(holder):
        raise Conflict(ERROR_BUSY, subject,
                       f"another writer holds this CA's database (lease epoch {epoch}, {holder}, renewed "
                       f"{max(age, 0):.1f}s ago); stop it, or wait {ttl:.0f}s after it stops renewing")
    me = holder_name()
    cur.execute(f"UPDATE writer_lease SET epoch = %s, holder = %s, acquired_us = {NOW_US}, renewed_us = {NOW_US},"
                " endpoints = %s WHERE id = 1", (epoch + 1, me, json.dumps(list(endpoints))))
    return Lease(epoch + 1, me)


def advertise(cur: Any, lease: Lease, endpoints: Sequence[str]) -> bool:
    """Record the holder's endpoints in its lease row; False when the epoch is no longer ours."""
    cur.execute("UPDATE writer_lease SET endpoints = %s WHERE id = 1 AND epoch = %s",
                (json.dumps(list(endpoints)), lease.epoch))
    return bool(cur.rowcount == 1)


READ_SQL = f"SELECT epoch, holder, renewed_us, endpoints, {NOW_US} FROM writer_lease WHERE id = 1"


def info(row: Sequence[Any]) -> dict[str, Any]:
    """A :data:`READ_SQL` row as ``writer_info``: holder ('' when free), epoch, endpoints, renewed_age_s (None
    when free; by the server's clock, the row's last column, as the lease was renewed by it)."""
    epoch, holder, renewed, now_us = int(row[0]), str(row[1]), int(row[2]), int(row[4])
    try:
        endpoints = [str(e) for e in json.loads(row[3] or "[]")]
    except (ValueError, TypeError):  # a hand-edited row: name no endpoint rather than fail a refusal
        endpoints = []
    return {"holder": holder, "epoch": epoch, "endpoints": endpoints if holder else [],
            "renewed_age_s": round(max(now_us - renewed, 0) / 1e6, 3) if holder else None}


def renew(cur: Any, lease: Lease, now_us: int) -> None:
    """The fencing statements, first of every commit transaction: declare our epoch (the database's trigger
    refuses log rows of any other, see :mod:`.ddl` v2) and renew the lease if the epoch is still ours."""
    declare(cur, lease.epoch)
    # By the server's clock (NOW_US), as :func:`take` measures the age; ``now_us`` is not written.
    cur.execute(f"UPDATE writer_lease SET renewed_us = {NOW_US} WHERE id = 1 AND epoch = %s", (lease.epoch,))


def declare(cur: Any, epoch: int) -> None:
    """``SET LOCAL certsrv.epoch``: the epoch this transaction writes under."""
    cur.execute("SELECT set_config('certsrv.epoch', %s, true)", (str(epoch),))


def verify(cur: Any, subject: str, lease: Lease) -> None:
    """Refuse (the caller then rolls back) when :func:`renew` matched no row: the epoch was superseded."""
    if cur.rowcount != 1:
        row = cur.execute("SELECT epoch, holder FROM writer_lease WHERE id = 1").fetchone()
        raise fenced_error(subject, lease, int(row[0]) if row else -1, str(row[1]) if row else "?")


def check(cur: Any, subject: str, lease: Lease, now_us: int) -> None:
    """:func:`renew` then :func:`verify` (outside pipeline mode)."""
    renew(cur, lease, now_us)
    verify(cur, subject, lease)


def fenced_error(subject: str, lease: Lease, epoch: int, holder: str) -> StorageError:
    """The refusal of a commit by a writer whose lease was taken over."""
    from .connect import Fenced

    return Fenced(ERROR_INVALID_STATE, subject,
                        f"this writer was fenced: its lease epoch {lease.epoch} was superseded by epoch {epoch} "
                        f"({holder}); nothing was written; this node is a standby until it takes the lease again")


def release(cur: Any, lease: Lease) -> None:
    """Give the lease up (the epoch stays, so the next writer takes epoch+1)."""
    cur.execute("UPDATE writer_lease SET holder = '', renewed_us = 0 WHERE id = 1 AND epoch = %s", (lease.epoch,))


class Heartbeat(threading.Thread):
    """Renews the lease of an idle writer every ``interval`` seconds, on a connection of its own.

    Commits renew it too; this keeps a writer with nothing to commit from looking dead to other nodes.
    When the renewal matches no row the epoch was superseded: ``on_fenced`` is told once and the thread ends.
    A failed connection is retried at the next beat (the lease simply ages meanwhile).
    """

    def __init__(self, url: str, lease: Lease, interval: float, on_fenced: Callable[[StorageError], None],
                 on_lost: Callable[[Exception], None] | None = None) -> None:
        super().__init__(name="certsrv-pg-lease", daemon=True)
        self.url, self.lease, self.interval, self.on_fenced = url, lease, interval, on_fenced
        self.on_lost = on_lost
        self._halt = threading.Event()
        # The monotonic time of the last renewal the database confirmed (the take counts as one). CLOCK_MONOTONIC
        # goes on while the process is stopped, so a writer thawed after SIGSTOP sees its lease as stale at once.
        self.renewed_mono = time.monotonic()

    def run(self) -> None:
        from .connect import connect, describe

        conn: Any = None
        subject = describe(self.url)
        while not self._halt.wait(self.interval):
            try:
                if conn is None or conn.closed:
                    conn = connect(self.url, idle_tx_timeout=self.interval * 3)
                with conn.transaction():
                    check(conn.cursor(), subject, self.lease, time.time_ns() // 1000)
                self.renewed_mono = time.monotonic()
            except StorageError as e:
                self.on_fenced(e)
                break
            except Exception as e:  # the server is unreachable now: try again at the next beat
                logging.getLogger("pycertsrv.store.postgres").warning("lease renewal failed: %s", e)
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                if self.on_lost is not None and not self._halt.is_set():
                    self.on_lost(e)  # issue 14: the store checks its own connection (a failover?) at once
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def fresh(self, ttl: float) -> bool:
        """Whether the database confirmed this lease less than ``ttl`` seconds ago (issue 14: another node may take a
        lease older than that, so this node must no longer call itself the writer to a load balancer)."""
        return time.monotonic() - self.renewed_mono < ttl

    def halt(self) -> None:
        """Ask the thread to end (it renews no more); does not wait."""
        self._halt.set()

    def stop(self) -> None:
        """End the thread and wait for it."""
        self._halt.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(10)
