"""``nurture bounces scan``: read bounce reports from a Maildir."""

from __future__ import annotations

from pathlib import Path

import click

from nurture.cli.common import load_settings


@click.group()
def bounces() -> None:
    """Bounce notifications that arrive by mail (docs/bounces.md)."""


@bounces.command("scan")
@click.argument("maildir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--delete", is_flag=True, help="Delete processed bounces instead of moving them to cur/.")
def bounces_scan(maildir: Path, delete: bool) -> None:
    """Process every unseen message in MAILDIR: suppress hard bounces, count soft ones.

    Processed messages move to cur/ marked seen (bounces are deleted instead with --delete; messages that
    are not bounces, and bounces ignored because they quote no message we sent, are always kept for a person
    to read)."""
    from nurture.subscribers.bounces import NotAMaildir, scan_maildir

    load_settings()
    try:
        tally = scan_maildir(maildir, delete=delete)
    except NotAMaildir as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"hard {tally.hard}, soft {tally.soft}, unrecognised {tally.unrecognised}, "
        f"already processed {tally.duplicate}, ignored {tally.ignored}"
    )
    if tally.suppressed_soft:
        click.echo(f"{tally.suppressed_soft} addresses reached the soft bounce limit and were suppressed")
