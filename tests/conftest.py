"""Shared fixtures, kept small. Area-specific fixtures live in their own test modules or helpers.

``database_url`` runs a test on SQLite and on PostgreSQL (``SNEAKERBOT_TEST_POSTGRES_URL``,
set by ``scripts/test-env.sh``), each time in a fresh database: a new SQLite file, or a new
PostgreSQL schema dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ENV = "SNEAKERBOT_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test server's URL; a missing one is an error, not a skip (CI always sets it)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"{POSTGRES_ENV} is not set: run the tests with `make test` (scripts/test-env.sh sets it)")
    return url


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a brand-new PostgreSQL schema, dropped after the test."""
    base = postgres_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_schema_url")
