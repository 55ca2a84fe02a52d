"""The schema in SQLite's dialect: create, migrate, and the statements that apply row images.

The table definitions are engine-neutral (:mod:`..schema`); these are the SQLite statements for them, used by
the SQLite engine and by whatever writes a backup set's database file (a SQLite file on every engine).
"""

from __future__ import annotations

import sqlite3

from ..schema import SCHEMA_VERSION, TABLES, Table

META_DDL = "CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# Migrations: MIGRATIONS[v] takes a database at version v to v+1.
MIGRATIONS: dict[int, list[str]] = {}


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table at the current schema version (inside the caller's transaction)."""
    conn.execute(META_DDL)
    for table in TABLES.values():
        for stmt in table.ddl():
            conn.execute(stmt)
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
    return found


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
