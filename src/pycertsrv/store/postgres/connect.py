"""Connecting to PostgreSQL: URL checks and libpq failures as one line with an HRESULT (issue 12).

The password comes from libpq's own sources only (PGPASSWORD, ``~/.pgpass``, ``passfile``, a service
file): a URL that carries one is refused, because a command line or a config file is readable by
others (``ps``, backups of the home). Every failure names the database (host and name, never a
secret) and says what to do next.
"""

from __future__ import annotations

from typing import Any

from ...errors import (
    E_ACCESSDENIED,
    E_INVALIDARG,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_STATE,
    RPC_S_SERVER_UNAVAILABLE,
    AccessDenied,
    CertSrvError,
    Conflict,
    InvalidArgument,
    NotFound,
    StorageError,
)

SCHEMES = ("postgresql://", "postgres://")


class Fenced(StorageError):
    """A commit refused because this writer's lease epoch was superseded (the store turns it into NotWriter)."""


def idle_killed(e: BaseException) -> bool:
    """Whether the server ended the session because its transaction waited on us past
    ``idle_in_transaction_session_timeout`` (see :func:`connect`): that transaction was open and idle, so its
    COMMIT never reached the server and nothing of it was written."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return (isinstance(e, psycopg.errors.IdleInTransactionSessionTimeout)
            or "idle-in-transaction timeout" in str(e).lower())


def connection_lost(e: BaseException) -> bool:
    """Whether ``e`` means the connection to the server is gone (the server died, a failover, a network cut):
    psycopg's OperationalError (AdminShutdown, ConnectionFailure, ...) or our mapping of one."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(e, (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction,
                      psycopg.errors.IdleInTransactionSessionTimeout)):
        return True  # a server that became a standby under us is as good as gone for the writer
    return isinstance(e, CertSrvError) and e.hresult == RPC_S_SERVER_UNAVAILABLE


def is_postgres_url(url: str | None) -> bool:
    """Whether ``url`` names a PostgreSQL database (a libpq URI)."""
    return bool(url) and str(url).startswith(SCHEMES)


def describe(url: str) -> str:
    """``postgresql://HOST[:PORT]/DB`` without user or password: the subject of error lines."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(url)
    except Exception:  # a URL that does not parse is described by its scheme only
        return "postgresql database"
    host = str(d.get("host") or "localhost")
    port = f":{d['port']}" if d.get("port") else ""
    return f"postgresql://{host}{port}/{d.get('dbname') or ''}"


def check_url(url: str) -> dict[str, Any]:
    """Parse a libpq URI; refuse one that is not PostgreSQL or that carries a password."""
    if not is_postgres_url(url):
        raise InvalidArgument(E_INVALIDARG, "database",
                              f"{url!r} is not a PostgreSQL URL; use postgresql://[USER@]HOST[,HOST2]/DBNAME")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as e:
        msg = str(e).splitlines()[0] if str(e) else "cannot parse"
        raise InvalidArgument(E_INVALIDARG, "database",
                              f"bad PostgreSQL URL: {msg}; use postgresql://[USER@]HOST[,HOST2]/DBNAME") from None
    if params.get("password"):
        raise InvalidArgument(E_INVALIDARG, describe(url),
                              "the URL carries a password; remove it and give it through PGPASSWORD, "
                              "~/.pgpass or a pg_service.conf service (libpq's own sources)")
    if not params.get("dbname"):
        raise InvalidArgument(E_INVALIDARG, describe(url), "the URL names no database; add /DBNAME")
    return params


def map_error(url: str, e: BaseException) -> CertSrvError:
    """A psycopg connection failure as one line with its HRESULT and what to do next."""
    text = " ".join(str(e).split()) or type(e).__name__
    low = text.lower()
    subject = describe(url)
    if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
        return AccessDenied(E_ACCESSDENIED, subject,
                            "PostgreSQL refused the login (wrong or missing password); set it in ~/.pgpass "
                            "or PGPASSWORD for this user, or fix pg_hba.conf")
    if "does not exist" in low and "database" in low:
        return NotFound(ERROR_FILE_NOT_FOUND, subject,
                        f"{text}; create it first (createdb) or fix the database name in the URL")
    if "role" in low and "does not exist" in low:
        return AccessDenied(E_ACCESSDENIED, subject, f"{text}; create the role or fix the user in the URL")
    return CertSrvError(RPC_S_SERVER_UNAVAILABLE, subject,
                        f"cannot reach the PostgreSQL server: {text}; start it or fix host/port in the URL")


def connect(url: str, *, autocommit: bool = True, connect_timeout: int = 10,
            idle_tx_timeout: float | None = None) -> Any:
    """A psycopg connection to ``url`` (checked first); failures as :class:`CertSrvError`.

    :param idle_tx_timeout: seconds after which the server aborts a transaction of this connection that waits
        on its client (``idle_in_transaction_session_timeout``). The writer's connections set it to the lease
        time (issue 14): a writer frozen (SIGSTOP, a VM pause) inside a commit would otherwise hold the lease
        row's lock, and no standby could take the lease however long it waited.
    """
    params = check_url(url)
    import psycopg

    # Issue 14: with several hosts in the URL, only the primary will do (writes, and reads that must see
    # them); an explicit target_session_attrs in the URL wins.
    attrs = None if params.get("target_session_attrs") else "read-write"
    try:
        if attrs is None:
            conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout,
                                   application_name="certsrv")
        else:
            conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout,
                                   application_name="certsrv", target_session_attrs=attrs)
        if idle_tx_timeout is not None:
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                         (str(max(int(idle_tx_timeout * 1000), 100)),))
            if not autocommit:
                conn.commit()
        return conn
    except psycopg.Error as e:
        raise map_error(url, e) from None


def as_certsrv(url: str, e: BaseException) -> CertSrvError:
    """A psycopg failure (or ours) as a CertSrvError."""
    if isinstance(e, CertSrvError):
        return e
    import psycopg

    if isinstance(e, psycopg.OperationalError):
        return map_error(url, e)
    if isinstance(e, psycopg.errors.RaiseException) and "certsrv: fenced" in str(e):
        # The database's own fencing trigger (ddl v2) refused log rows of a superseded writer.
        detail = str(e).splitlines()[0].replace("certsrv: fenced: ", "")
        return Fenced(ERROR_INVALID_STATE, describe(url),
                            f"this writer was fenced: the database refused its commit ({detail}: the lease epoch was "
                            "superseded by another writer); nothing was written; this node is a standby until it takes "
                            "the lease again")
    if isinstance(e, psycopg.errors.UniqueViolation):
        return Conflict(ERROR_INVALID_STATE, describe(url),
                        f"the database refused a duplicate ({' '.join(str(e).split())}); nothing was written")
    return StorageError(ERROR_INVALID_STATE, describe(url), f"PostgreSQL error: {' '.join(str(e).split())}")
