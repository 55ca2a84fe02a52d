"""Shared fixtures for every test package (keep this small and generic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_support import PgCluster, shared_cluster


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    """An empty directory to use as a CA home."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throw-away PostgreSQL cluster for the session (skips outside CI when no server binary exists)."""
    yield shared_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session's cluster (a libpq URI); dropped afterwards."""
    url = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)
