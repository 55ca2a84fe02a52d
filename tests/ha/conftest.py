"""Fixtures of the HA trials: one synchronous replication pair per module (trials that promote its standby
make their own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_support import PgPair, pair_context


@pytest.fixture(scope="module")
def pair() -> Iterator[PgPair]:
    with pair_context(sync="remote_apply") as p:
        yield p


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
