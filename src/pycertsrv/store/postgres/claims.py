"""The cluster-wide backup claim on PostgreSQL (issue 14; see :mod:`..claims`): one row, ``backup_claim``.

Ages are measured by the database server's clock (``clock_timestamp()``), the one clock every node shares,
so nodes with skewed clocks agree when a claim expired. The claim is operational state, not CA data: it is
not in the redo log, and any node (writer or standby) may take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import CertSrvError
from ..claims import busy_error, gone_error
from .connect import as_certsrv
from .lease import NOW_US


class PgClaims:
    """``claim_backup`` / ``renew_backup_claim`` / ``release_backup_claim`` (mixed into ``PgStore``)."""

    url: str

    if TYPE_CHECKING:
        def _reader(self) -> Any: ...
        def _rows(self, query: str, params: Sequence[Any] = (), *, patient: bool = True
                  ) -> list[tuple[Any, ...]]: ...

    def _claim_tx(self, session_id: str, node: str | None, ttl: float | None) -> None:
        conn = self._reader()
        try:
            with conn.transaction():
                cur = conn.cursor()
                row = cur.execute(f"SELECT session_id, node, ttl_s, ({NOW_US} - renewed_us) / 1e6 FROM backup_claim"
                                  " WHERE id = 1 FOR UPDATE").fetchone()
                if row is not None and row[0] != session_id and (node is None or float(row[3]) < float(row[2])):
                    raise busy_error(str(row[1]), str(row[0]), float(row[3]), float(row[2]))
                if node is None:  # a renewal
                    if row is None:
                        raise gone_error(session_id)
                    cur.execute(f"UPDATE backup_claim SET renewed_us = {NOW_US} WHERE id = 1")
                    return
                cur.execute(f"INSERT INTO backup_claim (id, session_id, node, claimed_us, renewed_us, ttl_s) "
                            f"VALUES (1, %s, %s, {NOW_US}, {NOW_US}, %s) ON CONFLICT (id) DO UPDATE SET "
                            "session_id = EXCLUDED.session_id, node = EXCLUDED.node, claimed_us = EXCLUDED.claimed_us,"
                            " renewed_us = EXCLUDED.renewed_us, ttl_s = EXCLUDED.ttl_s", (session_id, node, ttl))
        except CertSrvError:
            raise
        except Exception as e:
            raise as_certsrv(self.url, e) from None

    def claim_backup(self, session_id: str, node: str, ttl: float) -> None:
        """Claim the CA's one backup slot, cluster-wide, for ``session_id`` on ``node``; Conflict (ERROR_BUSY)
        naming the holder while another live claim holds it. A claim not renewed within ``ttl`` seconds has
        expired (its node died) and is taken over; claiming again for the same session renews it."""
        self._claim_tx(session_id, node, ttl)

    def renew_backup_claim(self, session_id: str) -> None:
        """Renew ``session_id``'s claim; Conflict when another session took it over, NotFound when it is gone."""
        self._claim_tx(session_id, None, None)

    def release_backup_claim(self, session_id: str) -> None:
        """Give ``session_id``'s claim up (nothing when it holds none)."""
        conn = self._reader()
        try:
            with conn.transaction():
                conn.execute("DELETE FROM backup_claim WHERE id = 1 AND session_id = %s", (session_id,))
        except Exception as e:
            raise as_certsrv(self.url, e) from None
