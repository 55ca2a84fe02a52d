"""The PostgreSQL schema of a CA database and its versioned migrations (issue 12).

The materialised tables are the SQLite engine's (:data:`..schema.TABLES`) with PostgreSQL types
(INTEGER → bigint, TEXT → text, BLOB → bytea), so a row read from either engine is the same Python
value. Beside them:

- ``_meta``: the SQLite engine's key/value table, with the same keys (identity, name, applied_lsn,
  circular_logging, schema_version), so that a full backup copies it as it is into the set's SQLite file.
- ``log_record``: the redo log, one row per record; ``payload`` is byte for byte the payload of the same
  record in an ``edbXXXXXXXX.log`` file and ``crc`` the frame's CRC32 (:func:`..logfile.encode_record`).
- ``log_generation``: generations (number, first LSN, created, closed); an incremental backup exports each
  as an ``edb`` file.
- ``writer_lease``: one row, the fencing epoch of the writer (every commit transaction checks it) and,
  from v3, the endpoints the writer advertises (issue 14).
- ``backup_claim`` (v3): at most one row, the backup session holding the CA's one backup slot cluster-wide.
- ``pg_schema_version``: the migrations applied. Migrations run from ``certsrv init`` and
  ``certsrv db upgrade`` only, never when the service starts (a node on a read-only standby must still
  serve reads; step-ca#1892).
"""

from __future__ import annotations

from typing import Any

from ..schema import REQUEST_KEY_INDEX, TABLES

PG_TYPES = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea", "REAL": "double precision"}


def _v1() -> list[str]:
    out: list[str] = ["CREATE TABLE _meta (key text PRIMARY KEY, value text NOT NULL)"]
    for t in TABLES.values():
        out += t.ddl(PG_TYPES)
    # Serials are random (159 bits); several nodes may issue over time, so the database refuses a duplicate.
    out.append("CREATE UNIQUE INDEX ux_request_serial ON request (serial) WHERE serial IS NOT NULL")
    out += [
        "CREATE TABLE log_generation (gen integer PRIMARY KEY, first_lsn bigint NOT NULL,"
        " created_us bigint NOT NULL, closed_us bigint)",
        # Gapless, commit-ordered LSNs come from the one writer (never a sequence: issue 12, measured).
        "CREATE TABLE log_record (lsn bigint PRIMARY KEY, gen integer NOT NULL REFERENCES log_generation,"
        " ts_us bigint NOT NULL, crc bigint NOT NULL, payload bytea NOT NULL)",
        "CREATE INDEX ix_log_record_gen ON log_record (gen, lsn)",
        "CREATE TABLE writer_lease (id integer PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL,"
        " holder text NOT NULL, acquired_us bigint NOT NULL, renewed_us bigint NOT NULL)",
        "INSERT INTO writer_lease VALUES (1, 0, '', 0, 0)",
    ]
    return out


def _v2() -> list[str]:
    # Fencing in the database itself: a log row or generation row is refused unless the transaction declared
    # (SET LOCAL certsrv.epoch) the lease's current epoch, so even a writer that ignored the lease check
    # cannot commit once another writer took the lease (issue 12: the database refuses split brain).
    return [
        """CREATE FUNCTION certsrv_fence() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE mine text := current_setting('certsrv.epoch', true);
                cur bigint;
        BEGIN
            SELECT epoch INTO cur FROM writer_lease WHERE id = 1;
            IF mine IS NULL OR mine = '' OR mine::bigint <> cur THEN
                RAISE EXCEPTION 'certsrv: fenced: writer epoch % is not the lease epoch %', coalesce(mine, 'unset'), cur
                    USING ERRCODE = 'P0001', HINT = 'this writer lost the lease; reopen the database';
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER log_record_fence AFTER INSERT ON log_record FOR EACH STATEMENT "
        "EXECUTE FUNCTION certsrv_fence()",
        "CREATE TRIGGER log_generation_fence AFTER INSERT ON log_generation FOR EACH STATEMENT "
        "EXECUTE FUNCTION certsrv_fence()",
    ]


def _v3() -> list[str]:
    # Issue 14, several nodes: each generation records the lease epoch it was written under (the backup set's
    # lineage); the writer's advertised endpoints (a JSON list) sit in its lease row, so a standby names them;
    # one cluster-wide backup claim (one backup at a time per CA, whichever node it runs on), timed by the
    # database server's clock so that nodes with skewed clocks agree on its expiry.
    return [
        "ALTER TABLE log_generation ADD COLUMN epoch bigint NOT NULL DEFAULT 0",
        "ALTER TABLE writer_lease ADD COLUMN endpoints text NOT NULL DEFAULT '[]'",
        "CREATE TABLE backup_claim (id integer PRIMARY KEY CHECK (id = 1), session_id text NOT NULL,"
        " node text NOT NULL, claimed_us bigint NOT NULL, renewed_us bigint NOT NULL, ttl_s double precision NOT NULL)",
    ]


def _v4() -> list[str]:
    # Issue 14: a submit's request key is held at most once (pycertsrv.requestkey, ca/keyclaims.py); written by
    # issue 14's "reqkey" part beside pgnode's v3, and appended after the last version whatever its number.
    return [REQUEST_KEY_INDEX]


# MIGRATIONS[v] takes the schema from version v-1 to v (v=1 creates it). Append; never edit a released one.
MIGRATIONS: dict[int, list[str]] = {1: _v1(), 2: _v2(), 3: _v3()}

MIGRATIONS[max(MIGRATIONS) + 1] = _v4()  # the request-key index: v4 once v3 is merged (see _v4)
PG_SCHEMA_VERSION = max(MIGRATIONS)
VERSION_DDL = ("CREATE TABLE IF NOT EXISTS pg_schema_version (version integer PRIMARY KEY,"
               " applied_us bigint NOT NULL)")


def current_version(conn: Any) -> int:
    """The schema version of the database (0: none yet)."""
    row = conn.execute("SELECT to_regclass('pg_schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    v = conn.execute("SELECT max(version) FROM pg_schema_version").fetchone()[0]
    return int(v or 0)


def upgrade(conn: Any, now_us: int) -> tuple[int, int]:
    """Run the missing migrations in the caller's transaction; returns (version found, version now).

    An advisory transaction lock serialises two upgraders of one database.
    """
    conn.execute("SELECT pg_advisory_xact_lock(7212026)")
    conn.execute(VERSION_DDL)
    found = current_version(conn)
    if found > PG_SCHEMA_VERSION:
        from ...errors import ERROR_INVALID_STATE, CertSrvError

        raise CertSrvError(ERROR_INVALID_STATE, "database",
                           f"the database has schema version {found}, newer than this release's "
                           f"{PG_SCHEMA_VERSION}; use the release that created it; nothing was written")
    for v in range(found + 1, PG_SCHEMA_VERSION + 1):
        for stmt in MIGRATIONS[v]:
            conn.execute(stmt)
        conn.execute("INSERT INTO pg_schema_version (version, applied_us) VALUES (%s, %s)", (v, now_us))
    return found, PG_SCHEMA_VERSION


def upgrade_schema(url: str) -> tuple[int, int]:
    """``certsrv db upgrade``: bring the database at ``url`` to this release's schema, in one transaction.

    :returns: (the version found, the version now); equal when there was nothing to do.
    """
    from ..logfile import now_us
    from .connect import as_certsrv, connect

    conn = connect(url)
    try:
        with conn.transaction():
            return upgrade(conn, now_us())
    except Exception as e:
        raise as_certsrv(url, e) from None
    finally:
        conn.close()
