"""``nurture db ...``: the database schema (Alembic migrations)."""

from __future__ import annotations

from pathlib import Path

import click

from nurture.cli.common import load_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (creates the database on first run)."""
    upgrade_schema()
    click.echo("database is at the latest schema")


def upgrade_schema() -> None:
    from nurture.core.db import get_engine
    from nurture.core.migrate import upgrade

    settings = load_settings()
    if settings.resolved_database_url.startswith("sqlite:///"):
        Path(settings.resolved_database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    upgrade(get_engine())
