"""Fixtures every test directory may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import postgres

__all__ = ["database_url", "postgres"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases: a test that takes this runs on SQLite and on a real PostgreSQL server
    (``tests.postgres``), each time on a fresh, empty database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'accounts.db'}"
    server = request.getfixturevalue("postgres")
    url: str = await server.new_database()
    return url
