"""The schema in SQLite's dialect: create, migrate, and the statements that apply row images.

The table definitions are engine-neutral (:mod:`..schema`); these are the SQLite statements for them, used by
the SQLite engine and by whatever writes a backup set's database file (a SQLite file on every engine).
"""

from __future__ import annotations

import logging
import sqlite3

from ..schema import REQUEST_KEY_INDEX, SCHEMA_VERSION, TABLES, Table

log = logging.getLogger("pycertsrv.store")

META_DDL = "CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# Migrations: MIGRATIONS[v] takes a database at version v to v+1.
MIGRATIONS: dict[int, list[str]] = {}


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table at the current schema version (inside the caller's transaction)."""
    conn.execute(META_DDL)
    for table in TABLES.values():
        for stmt in table.ddl():
            conn.execute(stmt)
    conn.execute(REQUEST_KEY_INDEX)
    conn.execute(
        "INSERT OR REPLACE INTO _meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )


def migrate(conn: sqlite3.Connection) -> int:
    """Bring an older database up to SCHEMA_VERSION; returns the version it found."""
    row = conn.execute("SELECT value FROM _meta WHERE key = 'schema_version'").fetchone()
    found = int(row[0]) if row else 0
    version = found
    while version < SCHEMA_VERSION:
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
        version += 1
        conn.execute("UPDATE _meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    ensure_indexes(conn)
    return found


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Indexes added after the schema version (issue 14's request-key index): created when missing, on every open.

    A database whose rows already break the index (an attribute named RequestKey given twice before request keys
    existed) still opens: the writer's own check keeps new keys unique (pycertsrv.ca.requestkey), and the log says
    which rows stop the index.
    """
    try:
        conn.execute(REQUEST_KEY_INDEX)
    except sqlite3.IntegrityError:
        dup = conn.execute("SELECT value, COUNT(*) FROM attribute WHERE name = 'RequestKey' GROUP BY value "
                           "HAVING COUNT(*) > 1 LIMIT 3").fetchall()
        log.warning("the unique index of request keys cannot be made: the attribute RequestKey repeats (%s); "
                    "new request keys are still kept unique by the writer",
                    ", ".join(f"{v!r} x{n}" for v, n in dup))


# Statements per table name (not per Table: hashing a frozen dataclass of columns costs more than building).
_UPSERT: dict[str, str] = {}
_DELETE: dict[str, str] = {}


def upsert_sql(t: Table) -> str:
    """The statement that puts a whole row image (built once per table)."""
    sql = _UPSERT.get(t.name)
    if sql is None:
        names = ", ".join(t.column_names)
        marks = ", ".join("?" for _ in t.columns)
        sql = _UPSERT[t.name] = f"INSERT OR REPLACE INTO {t.name} ({names}) VALUES ({marks})"
    return sql


def delete_sql(t: Table) -> str:
    """The statement that deletes a row by primary key (built once per table)."""
    sql = _DELETE.get(t.name)
    if sql is None:
        sql = _DELETE[t.name] = f"DELETE FROM {t.name} WHERE " + " AND ".join(f"{k} = ?" for k in t.key)
    return sql
