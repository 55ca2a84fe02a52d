"""The engines the conformance suite runs on: one factory per engine, in this one place.

SQLite, and PostgreSQL (issue 12) on the session's throw-away cluster (:mod:`pg_support`): every test of
``test_engine_conformance.py`` runs on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycertsrv.store import (
    ByteStream,
    Engine,
    RecoveryReport,
    RecoveryTarget,
    Store,
    StoreOptions,
    Until,
    recovery_target,
)
from pycertsrv.store.interface import EVERYTHING


@dataclass(frozen=True)
class EngineKind:
    """How the suite makes, opens and restores databases of one engine.

    :param name: the test id.
    :param create: make an empty database at ``place`` (a directory the test owns) and open it.
    :param open: open the database at ``place`` again (soft recovery runs).
    :param target: a recovery target that rebuilds a database into ``dest`` (a file path the test owns).
    :param child_open: Python lines for a child process that bind ``engine`` to the database at ``sys.argv[1]``.
    """

    name: str
    create: Callable[[Path], Engine]
    open: Callable[[Path], Engine]
    target: Callable[[Path], RecoveryTarget]
    child_open: str


# A small log size: the tests roll through several generations with few records.
SQLITE_OPTIONS = StoreOptions(log_size=64 << 10, checkpoint_records=0)

SQLITE = EngineKind(
    name="sqlite",
    create=lambda place: Store.create(place, "conformance", SQLITE_OPTIONS),
    open=lambda place: Store.open(place, SQLITE_OPTIONS),
    target=recovery_target,
    child_open=("from pycertsrv.store import Store, StoreOptions\n"
                "engine = Store.open(Path(sys.argv[1]), StoreOptions(log_size=64 << 10, checkpoint_records=0))\n"),
)


# PostgreSQL: ``place`` is a directory holding the URL of a fresh database (so a child process finds it too).
PG_OPTIONS = StoreOptions(log_size=64 << 10)


def _pg_create(place: Path) -> Engine:
    from pg_support import require_postgres, shared_cluster
    from pycertsrv.store.postgres import PgStore

    require_postgres()
    url = shared_cluster().new_database("conf")
    place.mkdir(parents=True, exist_ok=True)
    (place / "url").write_text(url)
    return PgStore.create(url, "conformance", PG_OPTIONS, home=place)


def _pg_open(place: Path) -> Engine:
    from pycertsrv.store.postgres import PgStore

    return PgStore.open((place / "url").read_text(), PG_OPTIONS, home=place)


class _PgTargetToFile:
    """Rebuilds into a fresh PostgreSQL database; after ``finish`` its tables are also written to ``dest`` as
    the SQLite snapshot file the suite inspects (the engine's own full-backup path)."""

    def __init__(self, dest: Path) -> None:
        from pg_support import shared_cluster
        from pycertsrv.store.postgres.load import PgRecoveryTarget

        self.dest = dest
        self.url = shared_cluster().new_database("conf")
        self.inner = PgRecoveryTarget(self.url)

    def load_snapshot(self, snapshot: ByteStream) -> int:
        return self.inner.load_snapshot(snapshot)

    def replay(self, generations: Sequence[ByteStream], until: Until = EVERYTHING,
               *, identity: str | None = None) -> RecoveryReport:
        return self.inner.replay(generations, until, identity=identity)

    def check_integrity(self) -> str:
        return self.inner.check_integrity()

    def finish(self) -> None:
        from pycertsrv.store.postgres import PgStore

        self.inner.finish()
        with PgStore.open(self.url) as e:
            e.snapshot(self.dest)

    def abort(self) -> None:
        self.inner.abort()


POSTGRES = EngineKind(
    name="postgresql",
    create=_pg_create,
    open=_pg_open,
    target=_PgTargetToFile,
    child_open=("from pycertsrv.store import StoreOptions\nfrom pycertsrv.store.postgres import PgStore\n"
                "engine = PgStore.open((Path(sys.argv[1]) / 'url').read_text(), StoreOptions(log_size=64 << 10))\n"),
)

ENGINES = [SQLITE, POSTGRES]
