"""Alembic environment: runs against the engine ``bot.store.db.init_db`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bot.store.models import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave tables we do not own alone (APScheduler keeps its job table in the same database)."""
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_online() -> None:
    """Migrate through the given engine, or one built from ``sqlalchemy.url``."""
    engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
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
