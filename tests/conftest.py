"""Fixtures shared by every test directory: one throw-away PostgreSQL for the whole run, and
the ``[store]`` section of each backend for tests that run on both."""

from __future__ import annotations

from typing import Any

import pytest

from tests.postgres import Postgres, postgres_server

__all__ = ["postgres_server", "store_section"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``[store]`` keys: SQLite in the test's own directory, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    pg: Postgres = request.getfixturevalue("postgres_server")
    return {"url": pg.new_database(), "timeout": 5.0, "plaintext_keys": True}
