"""Fixtures every test directory may use."""

from __future__ import annotations

import compileall
from pathlib import Path

import pytest

import modelyard
from tests.postgres import postgres

__all__ = ["database_url", "postgres"]


def pytest_configure(config: pytest.Config) -> None:
    """Compiles modelyard's own modules once. The servers, runners and CLI calls the tests
    start import them afresh each time, and an editable install is not compiled by the
    installer: with PYTHONDONTWRITEBYTECODE=1, as on our machines, each process would compile
    them all again (about 0.2 s a start)."""
    compileall.compile_dir(Path(modelyard.__file__).parent, quiet=1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases: a test that takes this runs on SQLite and on a real PostgreSQL server
    (``tests.postgres``), each time on a fresh, empty database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'accounts.db'}"
    server = request.getfixturevalue("postgres")
    url: str = await server.new_database()
    return url
