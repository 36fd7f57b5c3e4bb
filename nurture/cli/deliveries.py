"""``nurture dispatch`` and ``nurture deliveries ...``: one dispatch tick, and emails whose outcome is
unknown."""

from __future__ import annotations

from collections import Counter

import click

from nurture.cli.common import load_settings


@click.command("dispatch")
@click.option("--once", is_flag=True, required=True, help="Run one dispatch tick now and exit.")
@click.option(
    "--inline", is_flag=True, help="Send the claimed emails in this process instead of via workers."
)
def dispatch(once: bool, inline: bool) -> None:
    """Claim due deliveries and hand them to workers (or send them here with --inline)."""
    from nurture.delivery.dispatch import dispatch_once

    outcomes: Counter[str] = Counter()
    if inline:
        from nurture.tasks import process_sender

        sender = process_sender()

        def enqueue(token: str, ids: list[int]) -> None:
            outcomes.update(sender.send_batch(token, ids))
    else:
        from nurture.tasks import enqueue_batch as enqueue

    result = dispatch_once(enqueue)
    click.echo(
        f"claimed {result.claimed}; returned {result.reaped.returned} expired leases; "
        f"{result.reaped.ambiguous} unknown outcomes"
    )
    if outcomes:
        click.echo("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    from nurture.cli.webhooks import dispatch_webhooks

    click.echo(dispatch_webhooks(inline))


@click.group()
def deliveries() -> None:
    """Sends whose outcome is unknown: list them, and resolve the ones held for a person."""


@deliveries.command("unknown")
@click.option("--held", is_flag=True, help="Only those waiting for a person (NURTURE_AMBIGUOUS_POLICY=hold).")
@click.option("--sequence", "slug", default=None, help="Only this sequence.")
def deliveries_unknown(held: bool, slug: str | None) -> None:
    """List unknown outcomes, newest first, with how each was resolved."""
    from sqlalchemy import select

    from nurture.core.db import transaction
    from nurture.delivery.unknown_outcomes import unknown_outcomes
    from nurture.models import Sequence

    load_settings()
    with transaction() as session:
        sequence_id = None
        if slug:
            sequence_id = session.scalar(select(Sequence.id).where(Sequence.slug == slug))
            if sequence_id is None:
                raise click.ClickException(f"no sequence {slug!r}")
        found = unknown_outcomes(session, sequence_id=sequence_id, held_only=held)
    if not found:
        click.echo("no unknown outcomes")
    for u in found:
        click.echo(
            f"delivery {u.delivery_id}  {u.at:%Y-%m-%d %H:%M:%S} UTC  {u.sequence}/{u.step}  "
            f"{u.email or '(erased)'}  {u.resolution}  now {u.status}  ({u.cause})"
        )


def _resolve(delivery_id: int, action: str) -> None:
    from nurture.core.db import transaction
    from nurture.delivery.unknown_outcomes import ResolveError, resolve

    settings = load_settings()
    try:
        with transaction() as session:
            result = resolve(session, settings, delivery_id, action, None)
    except ResolveError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"delivery {result['delivery']}: {action} (now {result['status']})")


@deliveries.command("mark-sent")
@click.argument("delivery_id", type=click.IntRange(min=1))
def deliveries_mark_sent(delivery_id: int) -> None:
    """A held delivery did arrive (you checked): record it as sent."""
    _resolve(delivery_id, "mark-sent")


@deliveries.command("send-again")
@click.argument("delivery_id", type=click.IntRange(min=1))
def deliveries_send_again(delivery_id: int) -> None:
    """Send a held delivery again now, with the same Message-ID."""
    _resolve(delivery_id, "send-again")
