"""Alembic environment: migrates the database named by the settings, or a connection handed in by code."""

from __future__ import annotations

from alembic import context

from nurture import models  # noqa: F401  (registers every table on the metadata)
from nurture.core.db import Base, get_engine

target_metadata = Base.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    with get_engine().connect() as connection:
        _migrate(connection)
        connection.commit()


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
