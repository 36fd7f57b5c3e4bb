"""Claims and leases: concurrent ticks never take the same delivery; an expired lease is sent again;
the Celery tick wires fan-out, claim and send together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import WebhookAttempt, WebhookDelivery
from nurture.subscribers.enrollment import add_subscriber
from nurture.webhooks import endpoints
from nurture.webhooks.sending import WebhookSender, claim_due

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def setup_deliveries(factory, url: str, count: int) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        endpoints.create(session, get_settings(), None, url=url, event_types=["subscribed"])
    with transaction(factory) as session:
        for i in range(count):
            add_subscriber(session, f"p{i}@example.com")
    sender = WebhookSender(get_settings(), factory)
    try:
        sender.pump()
    finally:
        sender.close()


def test_concurrent_claims_on_postgres_never_overlap(pg_factory) -> None:  # type: ignore[no-untyped-def]
    setup_deliveries(pg_factory, "http://127.0.0.1:9/hooks", 6)
    first = pg_factory()
    first.begin()
    _, mine = claim_due(first, limit=4, lease_seconds=60)  # rows stay locked until this commits
    with transaction(pg_factory) as second:
        _, theirs = claim_due(second, limit=10, lease_seconds=60)  # skips the locked rows, no waiting
    first.commit()
    first.close()
    assert len(mine) == 4 and len(theirs) == 2 and not set(mine) & set(theirs)


def test_an_expired_lease_is_sent_again(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        setup_deliveries(factory, receiver.url, 1)
        sender = WebhookSender(get_settings(), factory)
        try:
            token, ids = sender.claim()
            assert len(ids) == 1  # ... and the worker holding it dies here
            advance(timedelta(seconds=get_settings().broker.lease_seconds - 1))
            assert sender.claim()[1] == []
            advance(timedelta(seconds=2))
            assert sender.tick() == {"succeeded": 1}
            assert sender.send_claimed(token, ids) == {"not-claimed": 1}  # the lost worker wakes up late
        finally:
            sender.close()
    assert len(receiver.received) == 1


def test_the_celery_tick_fans_out_claims_and_sends(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    from nurture import tasks
    from nurture.celery_app import app

    app.conf.task_always_eager = True  # the send task runs here, through Celery's API
    tasks.process_webhook_sender.cache_clear()
    try:
        setup_deliveries(factory, receiver.url, 0)
        with transaction(factory) as session:
            for i in range(12):
                add_subscriber(session, f"q{i}@example.com")
        assert tasks.webhooks_tick() == {"created": 12, "claimed": 12}
    finally:
        app.conf.task_always_eager = False
        tasks.process_webhook_sender.cache_clear()
    assert len(receiver.received) == 12
    with transaction(factory) as session:
        assert set(session.scalars(select(WebhookDelivery.status))) == {"succeeded"}


def test_finished_deliveries_are_forgotten_after_the_retention_period(factory, receiver, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(webhook_retention_days="30", webhook_retry_schedule="3600")
    with clock.frozen(START) as advance:
        setup_deliveries(factory, receiver.url, 1)
        receiver.script.statuses = [200, 500]
        sender = WebhookSender(get_settings(), factory)
        try:
            assert sender.tick() == {"succeeded": 1}
            with transaction(factory) as session:
                add_subscriber(session, "later@example.com")
            assert sender.tick() == {"retry": 1}  # still pending: kept whatever its age
            advance(timedelta(days=31))
            with transaction(factory) as session:
                add_subscriber(session, "new@example.com")
            sender._last_purge = float("-inf")  # the purge runs at most every 10 minutes
            assert sender.tick() == {"succeeded": 2}
        finally:
            sender.close()
    with transaction(factory) as session:
        left = list(session.scalars(select(WebhookDelivery.event_type).order_by(WebhookDelivery.id)))
        assert len(left) == 2  # the old success went; the old retry (now sent again) and the new one stay
        assert session.scalar(select(func.count()).select_from(WebhookAttempt)) == 3
