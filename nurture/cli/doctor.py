"""``nurture doctor``: is this installation able to send? (the checks are nurture.delivery.doctor)."""

from __future__ import annotations

import click

from nurture.core.config import ConfigError, get_settings


@click.command("doctor")
def doctor() -> None:
    """Check settings, database and migrations, broker, SMTP (EHLO, STARTTLS, login) and the DKIM key.

    One line per check (ok, warn or FAIL); exits 1 if any check fails. Makes no DNS lookups."""
    from nurture.delivery.doctor import FAIL, Check, run_checks

    try:
        settings = get_settings()
    except ConfigError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        click.echo(Check("settings", FAIL, detail).line())
        raise SystemExit(1) from None
    checks = run_checks(settings)
    for check in checks:
        click.echo(check.line())
    if any(check.status == FAIL for check in checks):
        raise SystemExit(1)
