"""Alembic environment: runs against the engine ``bot.store.db.init_db`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import ArgumentError

from bot.store.models import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave tables we do not own alone (APScheduler keeps its job table in the same database)."""
    return not (type_ == "table" and reflected and compare_to is None)


def _engine_from_url() -> Engine:
    """An engine for ``sqlalchemy.url``; without one, the ``ArgumentError`` ``create_engine(None)`` raises."""
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise ArgumentError("Expected string or URL object, got None: no engine given and no sqlalchemy.url")
    return create_engine(url)


def run_migrations_online() -> None:
    """Migrate through the given engine, or one built from ``sqlalchemy.url``."""
    engine = config.attributes.get("engine") or _engine_from_url()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use init_db(url)")
run_migrations_online()
