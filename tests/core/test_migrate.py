"""Migrations build the schema from nothing on both databases, and agree with the models."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from nurture.core.db import Base, make_engine
from nurture.core.migrate import current_revision, head_revision, is_current, upgrade
from tests.conftest import PG_ADMIN_URL, service_missing


def _assert_matches_models(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_from_empty_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert current_revision(engine) is None
    upgrade(engine)
    assert is_current(engine) and current_revision(engine) == head_revision()
    assert {"subscribers", "deliveries", "sequence_versions", "suppressions"} <= set(
        inspect(engine).get_table_names()
    )
    _assert_matches_models(engine)
    upgrade(engine)  # running again is a no-op
    engine.dispose()


def test_upgrade_from_empty_on_postgres() -> None:
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS nurture_migrations_{os.getpid()} WITH (FORCE)"))
            connection.execute(text(f"CREATE DATABASE nurture_migrations_{os.getpid()}"))
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/nurture_migrations_{os.getpid()}")
    try:
        upgrade(engine)
        assert is_current(engine)
        _assert_matches_models(engine)
        indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("deliveries")}
        assert "'pending'" in indexes["ix_deliveries_pending_due"]["dialect_options"]["postgresql_where"]
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS nurture_migrations_{os.getpid()} WITH (FORCE)"))
        admin.dispose()
