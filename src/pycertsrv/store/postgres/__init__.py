"""The CA database on PostgreSQL (issue 12): the same log and backups as the SQLite engine.

See :mod:`.engine` (writer, reads), :mod:`.lease` (fencing), :mod:`.exports` (full backup as a SQLite
file, incrementals as ``edb`` files), :mod:`.load` (hard recovery into PostgreSQL), :mod:`.ddl`
(versioned schema) and :mod:`.connect` (URLs and connection errors).
"""

from .connect import check_url, describe, is_postgres_url
from .engine import PgStore

__all__ = ["PgStore", "check_url", "describe", "is_postgres_url"]
