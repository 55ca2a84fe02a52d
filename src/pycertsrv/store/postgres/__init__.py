"""The CA database on PostgreSQL (issue 12): the same log and backups as the SQLite engine.

See :mod:`.engine` (writer, reads), :mod:`.node` (writer and standby roles, promotion, reconnection: issue
14), :mod:`.replication`, :mod:`.claims` (the cluster-wide backup claim), :mod:`.lease` (fencing),
:mod:`.exports` (full backup as a SQLite file, incrementals as ``edb`` files), :mod:`.load` (hard recovery
into PostgreSQL), :mod:`.ddl` (versioned schema) and :mod:`.connect` (URLs and connection errors).
"""

from .connect import check_url, describe, is_postgres_url
from .engine import PgStore
from .lease import LEASE_TTL
from .replication import replication_state

__all__ = ["LEASE_TTL", "PgStore", "check_url", "describe", "is_postgres_url", "replication_state"]
