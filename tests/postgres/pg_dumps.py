"""Table dumps and log payloads of either engine, for comparing them row by row (issue 12)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from pycertsrv.store import logfile, schema

Dump = dict[str, list[tuple[Any, ...]]]


def _ordered(t: schema.Table) -> str:
    return f"SELECT {', '.join(t.column_names)} FROM {t.name} ORDER BY {', '.join(t.key)}"


def sqlite_dump(db: Path) -> Dump:
    """Every materialised table and ``_meta`` of a SQLite database file, rows in key order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: Dump = {t.name: [tuple(r) for r in conn.execute(_ordered(t))] for t in schema.TABLES.values()}
        out["_meta"] = sorted(conn.execute("SELECT key, value FROM _meta"))
        return out
    finally:
        conn.close()


def pg_dump(url: str) -> Dump:
    """The same dump from a PostgreSQL CA database (bytea read as bytes)."""
    with psycopg.connect(url) as conn:
        out: Dump = {}
        for t in schema.TABLES.values():
            out[t.name] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                           for r in conn.execute(_ordered(t)).fetchall()]
        out["_meta"] = sorted(tuple(r) for r in conn.execute("SELECT key, value FROM _meta").fetchall())
        return out


def sqlite_payloads(log_dir: Path) -> list[tuple[int, bytes]]:
    """``(LSN, payload)`` of every record in a directory of ``edb`` generations, in LSN order."""
    out: list[tuple[int, bytes]] = []
    for path in logfile.list_generations(log_dir).values():
        res, recs = logfile.scan(path, None, keep=True)
        assert res.bad_offset is None, res.bad_reason
        out += [(r.lsn, r.payload) for r in recs]
    return sorted(out)


def pg_payloads(url: str) -> list[tuple[int, bytes]]:
    """``(LSN, payload)`` of every log row."""
    with psycopg.connect(url) as conn:
        return [(int(a), bytes(b)) for a, b in conn.execute("SELECT lsn, payload FROM log_record ORDER BY lsn")]
