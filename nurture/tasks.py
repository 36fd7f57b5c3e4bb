"""Thin Celery tasks: each opens its own sessions through the modules that do the work."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from nurture.celery_app import (
    DISPATCH_TASK,
    HOUSEKEEPING_TASK,
    OUTBOX_TASK,
    SEND_TASK,
    WEBHOOKS_SEND_TASK,
    WEBHOOKS_TICK_TASK,
    app,
    tick_expiry,
)
from nurture.core.config import get_settings
from nurture.core.db import session_factory
from nurture.delivery.dispatch import dispatch_once
from nurture.delivery.sender import Sender
from nurture.delivery.transport_guards import circuit_breaker, rate_limiter
from nurture.mail.factory import transport_from_url
from nurture.mail.templates import EmailTemplates

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def process_sender() -> Sender:
    """One sender per worker process, so the SMTP connection and compiled templates are reused."""
    settings = get_settings()
    transport = transport_from_url(
        settings.resolved_smtp_url,
        timeout=settings.mail.smtp_timeout,
        local_hostname=settings.mail.from_domain,
    )
    return Sender(
        settings,
        session_factory(),
        transport,
        EmailTemplates(settings.templates_dir),
        limiter=rate_limiter(settings),
        breaker=circuit_breaker(settings),
    )


def enqueue_batch(claim_token: str, delivery_ids: list[int]) -> None:
    send_deliveries.apply_async((claim_token, delivery_ids))


def enqueue_refilling_batch(claim_token: str, delivery_ids: list[int]) -> None:
    """A batch whose worker runs the next dispatch tick when it is done (nurture.delivery.dispatch)."""
    send_deliveries.apply_async((claim_token, delivery_ids), {"refill": True})


@app.task(name=DISPATCH_TASK, ignore_result=True)
def dispatch_due() -> dict[str, Any]:
    result = dispatch_once(enqueue_batch, refill_with=enqueue_refilling_batch)
    if result.claimed or result.reaped.returned or result.reaped.ambiguous:
        log.info(
            "dispatch: claimed %d, returned %d expired, %d ambiguous",
            result.claimed,
            result.reaped.returned,
            result.reaped.ambiguous,
        )
    return {"claimed": result.claimed}


@app.task(name=SEND_TASK, ignore_result=True, acks_late=True)
def send_deliveries(claim_token: str, delivery_ids: list[int], refill: bool = False) -> dict[str, int]:
    outcomes = process_sender().send_batch(claim_token, delivery_ids)
    log.info("sent batch of %d: %s", len(delivery_ids), dict(outcomes))
    if refill:
        # Half the tick's claim is still queued behind this batch: top the queue up now, not at the next beat.
        dispatch_due.apply_async(expires=tick_expiry(get_settings()))
    return dict(outcomes)


@app.task(name=OUTBOX_TASK, ignore_result=True)
def drain_outbox() -> dict[str, int]:
    """Send queued transactional email (confirmations) through this worker's transport and templates."""
    from nurture.delivery.confirmations import Outbox

    sender = process_sender()
    outbox = Outbox(
        sender.settings,
        sender.factory,
        sender.transport,
        sender.templates,
        limiter=sender.limiter,
        breaker=sender.breaker,
    )
    outcomes = outbox.drain(limit=50)
    if outcomes:
        log.info("outbox: %s", dict(outcomes))
    return dict(outcomes)


@app.task(name=HOUSEKEEPING_TASK, ignore_result=True)
def housekeeping() -> dict[str, int]:
    """Once a minute: flip scheduled sequences whose time has come to active (nothing waits on this: no
    delivery is due before activation), forget old login failures and signups never confirmed."""
    from nurture.core.db import transaction
    from nurture.sequences.control import activate_due
    from nurture.staff.accounts import purge_login_failures
    from nurture.subscribers.retention import purge_unconfirmed

    with transaction() as session:
        activated = activate_due(session)
        purged = purge_login_failures(session)
    with transaction() as session:
        forgotten = purge_unconfirmed(
            session, older_than_days=get_settings().limits.unconfirmed_retention_days
        )
    if forgotten:
        log.info("housekeeping: deleted %d signups never confirmed", forgotten)
    return {"activated": activated, "purged": purged, "forgotten": forgotten}


# --- outbound webhooks (nurture/webhooks/) -----------------------------------------------------------------


@lru_cache(maxsize=1)
def process_webhook_sender() -> Any:
    """One per worker process, so HTTP connections to endpoints are reused."""
    from nurture.webhooks.sending import WebhookSender

    return WebhookSender(get_settings(), session_factory())


@app.task(name=WEBHOOKS_TICK_TASK, ignore_result=True)
def webhooks_tick() -> dict[str, int]:
    """Fan new events out to endpoints, then claim due deliveries and hand them to the send queue in small
    batches (a slow endpoint holds one batch, not the tick)."""
    sender = process_webhook_sender()
    sender.purge()
    created = sender.pump()
    token, ids = sender.claim(limit=500)  # per tick: 100/s at the default 5 s interval
    for start in range(0, len(ids), 10):
        send_webhooks.apply_async((token, ids[start : start + 10]))
    if created or ids:
        log.info("webhooks: %d new deliveries, %d claimed", created, len(ids))
    return {"created": created, "claimed": len(ids)}


@app.task(name=WEBHOOKS_SEND_TASK, ignore_result=True, acks_late=True)
def send_webhooks(claim_token: str, delivery_ids: list[int]) -> dict[str, int]:
    return dict(process_webhook_sender().send_claimed(claim_token, delivery_ids))
