"""Which engine a CA home's database is on (issue 12): SQLite in ``HOME/db`` by default, PostgreSQL when
``[store] url`` names one. The CA, backup and service layers hold a :data:`CAStore` and never test which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .options import StoreOptions
from .postgres import PgStore
from .sqlite import Store

CAStore = Store | PgStore
"""An open CA database of either engine (both keep the :class:`.interface.Engine` contract and the facade
calls the CA layer uses: transaction, reads, roll_log, checkpoint, truncate_logs, health, log_space)."""


def create_store(home: Path, name: str, options: StoreOptions | None = None, url: str | None = None) -> CAStore:
    """Make the empty database of a new CA (in ``home``, or in the PostgreSQL database ``url``) and open it."""
    if url:
        return PgStore.create(url, name, options, home=Path(home))
    return Store.create(home, name, options)


def open_store(home: Path, options: StoreOptions | None = None, url: str | None = None, *,
               standby: bool = False) -> CAStore:
    """Open a CA's database for writing (SQLite: soft recovery; PostgreSQL: takes the writer lease).

    :param standby: PostgreSQL (issue 14): while another node holds the writer lease, open as a standby
        (reads; writes raise NotWriter) instead of refusing; ``certsrv serve`` does, CLI verbs do not. The
        lease time is ``options.lease_ttl`` (``[store] lease_ttl``). A SQLite store is always the writer.
    """
    if url:
        return PgStore.open(url, options, home=Path(home), standby=standby)
    return Store.open(home, options)


def engine_facts(store: CAStore) -> dict[str, Any]:
    """Which engine holds the database and, on PostgreSQL, where and under which writer lease epoch."""
    if isinstance(store, PgStore):
        return {"engine": "postgresql", "database": store.subject, "role": store.role,
                "writer_epoch": store.epoch}
    return {"engine": "sqlite", "database": None, "role": "writer", "writer_epoch": None}
