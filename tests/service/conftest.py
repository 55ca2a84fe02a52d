"""Fixtures for the service tests: a pending-policy CA served over its Unix socket (one per module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import Service, make_home


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A running service on a fresh CA whose policy leaves requests pending (so officers have work)."""
    home = make_home(tmp_path_factory.mktemp("svc") / "H", pending=True)
    svc = Service(home).start()
    yield svc
    svc.ensure_stopped()
