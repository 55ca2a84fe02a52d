"""The engines the conformance suite runs on: one factory per engine, in this one place.

Today SQLite; the PostgreSQL issue (12) adds its entry here, and every test of
``test_engine_conformance.py`` then runs on it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pycertsrv.store import Engine, RecoveryTarget, Store, StoreOptions, recovery_target


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

ENGINES = [SQLITE]
