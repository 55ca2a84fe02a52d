"""Shared fixtures for every test package (keep this small and generic)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    """An empty directory to use as a CA home."""
    home = tmp_path / "home"
    home.mkdir()
    return home
