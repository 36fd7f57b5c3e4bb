"""``nurture webhooks ...``: manage endpoints and deliveries from the shell .

Changes are audited with the actor "cli". Bad input prints the reason and exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from nurture.cli.common import load_settings
from nurture.webhooks.event_types import EVENT_TYPES

T = TypeVar("T")


def _run(work: Callable[..., T]) -> T:
    """Run ``work(session, settings)`` in one transaction; a WebhookError becomes a message and exit 1."""
    from nurture.core.db import transaction
    from nurture.webhooks.endpoints import WebhookError

    settings = load_settings()
    try:
        with transaction() as session:
            return work(session, settings)
    except WebhookError as exc:
        raise click.ClickException(exc.message) from None


def _sender():  # type: ignore[no-untyped-def]
    from nurture.core.db import session_factory
    from nurture.webhooks.sending import WebhookSender

    return WebhookSender(load_settings(), session_factory())


@click.group("webhooks")
def webhooks() -> None:
    """Signed outbound webhooks (docs/webhooks.md)."""


@webhooks.command("list")
def webhooks_list() -> None:
    """Every endpoint with its status and failures in the last 24 hours."""
    from nurture.webhooks.endpoints import list_endpoints

    rows = _run(lambda session, _settings: list_endpoints(session))
    if not rows:
        click.echo("no webhook endpoints")
    for row in rows:
        state = "enabled" if row["enabled"] else f"DISABLED ({row['disabled_reason']})"
        rate = "-" if row["failure_rate_24h"] is None else f"{row['failure_rate_24h']:.0%}"
        click.echo(
            f"{row['id']:>4}  {state:<10}  {row['url']}  [{', '.join(row['event_types'])}]  "
            f"24h: {row['attempts_24h']} attempts, {rate} failed"
        )


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--events", "event_types", required=True, help=f"Comma-separated, from: {', '.join(EVENT_TYPES)}."
)
@click.option("--description", default="", help="What this endpoint is for.")
def webhooks_add(url: str, event_types: str, description: str) -> None:
    """Register URL for the given events; prints the signing secret once."""
    from nurture.webhooks.endpoints import create

    def work(session, settings):  # type: ignore[no-untyped-def]
        endpoint, secret = create(
            session, settings, None, url=url, event_types=event_types, description=description
        )
        return endpoint.id, secret

    endpoint_id, secret = _run(work)
    click.echo(f"endpoint {endpoint_id} created")
    click.echo(f"signing secret (shown once, store it in the receiver): {secret}")


def _toggle(endpoint_id: str, enabled: bool) -> None:
    from nurture.webhooks.endpoints import set_enabled

    _run(lambda session, _settings: set_enabled(session, None, endpoint_id, enabled))
    click.echo(f"endpoint {endpoint_id} {'enabled' if enabled else 'disabled'}")


@webhooks.command("disable")
@click.argument("endpoint_id")
def webhooks_disable(endpoint_id: str) -> None:
    """Stop sending to an endpoint (deliveries wait until it is enabled again)."""
    _toggle(endpoint_id, False)


@webhooks.command("enable")
@click.argument("endpoint_id")
def webhooks_enable(endpoint_id: str) -> None:
    """Send to an endpoint again; its failure count starts over."""
    _toggle(endpoint_id, True)


@webhooks.command("rotate-secret")
@click.argument("endpoint_id")
def webhooks_rotate(endpoint_id: str) -> None:
    """A new signing secret; the old one also signs for NURTURE_WEBHOOK_SECRET_GRACE_HOURS."""
    from nurture.webhooks.endpoints import rotate_secret

    def work(session, settings):  # type: ignore[no-untyped-def]
        endpoint, secret = rotate_secret(session, settings, None, endpoint_id)
        return endpoint.previous_secret_until, secret

    until, secret = _run(work)
    click.echo(f"new signing secret (shown once): {secret}")
    click.echo(f"the previous secret keeps signing until {until:%Y-%m-%d %H:%M} UTC")


@webhooks.command("replay")
@click.argument("delivery_id")
def webhooks_replay(delivery_id: str) -> None:
    """Send one delivery again now, with a fresh timestamp; exit 1 if the endpoint did not answer 2xx."""
    from nurture.webhooks.endpoints import delivery_for_replay

    found = _run(lambda session, _settings: delivery_for_replay(session, None, delivery_id).id)
    _attempt_now(found, "replay", "delivery")


@webhooks.command("test")
@click.argument("endpoint_id")
def webhooks_test(endpoint_id: str) -> None:
    """Send a signed ``test`` event to an endpoint now."""
    from nurture.webhooks.endpoints import queue_test

    found = _run(lambda session, _settings: queue_test(session, None, endpoint_id))
    _attempt_now(found, "test", "test delivery")


def _attempt_now(delivery_id: int, reason: str, label: str) -> None:
    """Send one webhook delivery here and now and say how it went; exit 1 unless the endpoint said 2xx."""
    sender = _sender()
    try:
        outcome = sender.attempt_now(delivery_id, reason)
    finally:
        sender.close()
    click.echo(f"{label} {delivery_id}: {outcome.describe()}")
    if not outcome.ok:
        raise SystemExit(1)


@webhooks.command("pump")
def webhooks_pump() -> None:
    """Fan new events out to endpoints and send what is due, here and now (no worker needed)."""
    sender = _sender()
    try:
        outcomes = sender.tick(limit=500)
    finally:
        sender.close()
    click.echo(", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "nothing due")


def dispatch_webhooks(inline: bool) -> str:
    """The webhook half of ``nurture dispatch --once``: fan out, then send here (--inline) or enqueue."""
    if inline:
        sender = _sender()
        try:
            outcomes = sender.tick(limit=500)
        finally:
            sender.close()
        return "webhooks: " + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "nothing due")
    from nurture.tasks import webhooks_tick

    result = webhooks_tick()
    return f"webhooks: {result['created']} new deliveries, {result['claimed']} handed to workers"
