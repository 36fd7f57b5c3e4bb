"""What every command module shares: the settings, or a clear message and exit 1 when they are invalid."""

from __future__ import annotations

import click

from nurture.core.config import ConfigError, Settings, get_settings


def load_settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
