"""The materialised tables (spec §1.1: Request, Attribute, Extension, CRL) and their migrations.

Rows travel through the redo log as *images*: a list of column values in this order (the binary
payload format is in :mod:`pycertsrv.store.logfile`), so replay needs only this schema and never
the CA's logic.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..requestkey import REQUEST_KEY

# AD CS dispositions (certview.h DB_DISP_*).
DISP_PENDING = 9
DISP_ISSUED = 20
DISP_REVOKED = 21
DISP_ERROR = 30
DISP_DENIED = 31

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    """A column: name and SQLite type (INTEGER, TEXT or BLOB)."""

    name: str
    type: str


@dataclass(frozen=True)
class Table:
    """A logged table: columns in image order, primary key, secondary indexes."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @functools.cached_property
    def column_names(self) -> tuple[str, ...]:
        """Column names in image order (computed once: it is on every commit's path)."""
        return tuple(c.name for c in self.columns)

    @functools.cached_property
    def column_set(self) -> frozenset[str]:
        """Column names as a set."""
        return frozenset(self.column_names)

    @functools.cached_property
    def blob_positions(self) -> tuple[int, ...]:
        """Image positions of the BLOB columns."""
        return tuple(i for i, c in enumerate(self.columns) if c.type == "BLOB")

    @functools.cached_property
    def key_positions(self) -> tuple[int, ...]:
        """Image positions of the primary key columns."""
        return tuple(self.column_names.index(k) for k in self.key)

    def ddl(self, types: Mapping[str, str] | None = None) -> list[str]:
        """CREATE statements for the table and its indexes.

        :param types: an engine's name for each column type (default: the types as declared, SQLite's).
        """
        cols = ", ".join(f"{c.name} {types[c.type] if types else c.type}" for c in self.columns)
        stmts = [f"CREATE TABLE {self.name} ({cols}, PRIMARY KEY ({', '.join(self.key)}))"]
        for idx in self.indexes:
            stmts.append(f"CREATE INDEX ix_{self.name}_{'_'.join(idx)} ON {self.name} ({', '.join(idx)})")
        return stmts


def _cols(spec: str) -> tuple[Column, ...]:
    out = []
    for part in spec.split(","):
        name, typ = part.split()
        out.append(Column(name, typ))
    return tuple(out)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "request",
            _cols(
                "request_id INTEGER, disposition INTEGER, status_code INTEGER, disposition_message TEXT,"
                " submitted_at TEXT, resolved_at TEXT, requester TEXT, raw_request BLOB,"
                " request_subject TEXT, template TEXT,"
                " serial TEXT, raw_cert BLOB, not_before TEXT, not_after TEXT, subject TEXT,"
                " thumbprint TEXT, revoked_at TEXT, revocation_reason INTEGER, invalidity_date TEXT"
            ),
            ("request_id",),
            (("serial",), ("disposition",), ("not_after",)),
        ),
        Table("attribute", _cols("request_id INTEGER, name TEXT, value TEXT"), ("request_id", "name")),
        Table(
            "extension",
            _cols("request_id INTEGER, oid TEXT, flags INTEGER, value BLOB"),
            ("request_id", "oid"),
        ),
        Table(
            "crl",
            _cols("number INTEGER, this_update TEXT, next_update TEXT, raw BLOB, entries INTEGER"),
            ("number",),
        ),
        Table(
            "backup_history",
            _cols(
                "backup_id INTEGER, kind TEXT, started_at TEXT, ended_at TEXT,"
                " gen_low INTEGER, gen_high INTEGER, snapshot_lsn INTEGER, truncated INTEGER"
            ),
            ("backup_id",),
        ),
        Table("setting", _cols("name TEXT, value TEXT"), ("name",)),
    )
}

# Issue 14: a submit's request key (pycertsrv.ca.requestkey) is the attribute RequestKey, held at most once by
# the database. Partial and unique, in the dialect both engines read; IF NOT EXISTS so that SQLite can run it on
# every open (databases made before it get it then), and PostgreSQL in its migration.
REQUEST_KEY_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS ux_attribute_request_key ON attribute (value) "
                     f"WHERE name = '{REQUEST_KEY}'")


def table(name: str) -> Table:
    """The table called ``name`` or InvalidArgument."""
    try:
        return TABLES[name]
    except KeyError:
        raise InvalidArgument(None, "store", f"no table named {name!r}") from None


def row_to_image(t: Table, row: dict[str, Any]) -> list[Any]:
    """A row dict as the log's image: values in column order (missing columns are NULL)."""
    if not row.keys() <= t.column_set:
        unknown = sorted(set(row) - t.column_set)
        raise InvalidArgument(None, "store", f"table {t.name} has no column {unknown[0]!r}")
    image = list(map(row.get, t.column_names))  # one C loop: it runs for every row of every commit
    for i in t.key_positions:
        if image[i] is None:
            raise InvalidArgument(None, "store", f"row for {t.name} lacks key column {t.column_names[i]!r}")
    for i in t.blob_positions:
        v = image[i]
        if v is not None and type(v) is not bytes:
            # A copy now: the caller may reuse a bytearray before the commit is applied.
            image[i] = bytes(v) if isinstance(v, (bytearray, memoryview)) else v
    return image
