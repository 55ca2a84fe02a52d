from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pycertsrv.backup.session import BackupManager
from pycertsrv.home import Home
from pycertsrv.store import Store, StoreOptions


class FakeClock:
    """A monotonic clock the test moves by hand (no sleeping, no wall-clock asserts)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.at(tmp_path / "ca")


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    s = Store.create(home.root, "Test CA", StoreOptions(log_size=64 << 10))
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mgr(store: Store, home: Home, clock: FakeClock) -> Iterator[BackupManager]:
    m = BackupManager(store, home, 600.0, clock=clock)
    yield m
    m.close()
