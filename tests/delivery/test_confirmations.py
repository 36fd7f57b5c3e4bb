"""The transactional outbox: claimed once, leased, retried with backoff, failures recorded, drained by the
Celery task through the worker's transport."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from nurture.celery_app import DISPATCH_QUEUE, OUTBOX_TASK, create_app
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.delivery.confirmations import Outbox, claim_due
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import (
    MEMORY_OUTBOX,
    AmbiguousFailure,
    BeforeData,
    MemoryTransport,
    PermanentFailure,
    TemporaryFailure,
    Then,
)
from nurture.models import Event, OutboxMessage, Subscriber, Suppression
from tests.support.web import drain

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Failing(MemoryTransport):
    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        if self.errors:
            raise self.errors.pop(0)
        super().send(envelope_from, recipient, data, before_data)


def _row(factory) -> OutboxMessage:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(OutboxMessage))


@pytest.fixture
def queued(prospect_client: TestClient, app_factory):  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        assert (
            prospect_client.post("/subscribe", json={"email": "ana@example.com", "consent": True}).status_code
            == 202
        )
        yield advance


def test_a_claim_is_exclusive(app_factory, queued) -> None:  # type: ignore[no-untyped-def]
    with transaction(app_factory) as session:
        first = claim_due(session, limit=10, lease_seconds=60)
    with transaction(app_factory) as session:
        second = claim_due(session, limit=10, lease_seconds=60)
    assert len(first[1]) == 1 and second[1] == []
    # A redelivered or stale worker holding another token cannot send it.
    settings = get_settings()
    outbox = Outbox(settings, app_factory, MemoryTransport(), EmailTemplates(settings.templates_dir))
    assert outbox.send_one("not-the-token", first[1][0]) == "not-claimed"
    assert outbox.send_one(first[0], first[1][0]) == "sent"
    assert outbox.send_one(first[0], first[1][0]) == "not-claimed"


def test_temporary_failures_retry_with_backoff_then_send(app_factory, queued, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(retry_base_seconds="60")
    transport = Failing(TemporaryFailure("421 busy"), TemporaryFailure("421 busy"))
    assert drain(app_factory, transport)[0] == {"retry": 1}
    row = _row(app_factory)
    assert (row.status, row.attempts, row.due_at) == ("pending", 1, START + timedelta(seconds=60))
    assert drain(app_factory, transport)[0] == {}  # not due yet
    queued(timedelta(seconds=60))
    assert drain(app_factory, transport)[0] == {"retry": 1}
    assert _row(app_factory).due_at == START + timedelta(seconds=60 + 120)
    queued(timedelta(seconds=120))
    assert drain(app_factory, transport)[0] == {"sent": 1}
    assert len(transport.outbox) == 1 and _row(app_factory).attempts == 3


def test_attempts_are_capped(app_factory, queued, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(max_attempts="2", retry_base_seconds="1")
    transport = Failing(*[TemporaryFailure("421")] * 5)
    drain(app_factory, transport)
    queued(timedelta(seconds=5))
    assert drain(app_factory, transport)[0] == {"failed": 1}
    assert _row(app_factory).status == "failed"


def test_a_hard_bounce_fails_and_suppresses(app_factory, queued) -> None:  # type: ignore[no-untyped-def]
    assert drain(app_factory, Failing(PermanentFailure("550 no such user", 550)))[0] == {"failed": 1}
    with transaction(app_factory) as session:
        assert session.scalar(select(Suppression.email)) == "ana@example.com"
    assert _row(app_factory).last_error == "550 no such user"


def test_ambiguous_sends_are_held_not_repeated_under_hold(app_factory, queued, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(ambiguous_policy="hold")
    transport = Failing(AmbiguousFailure("connection lost after DATA"))
    assert drain(app_factory, transport)[0] == {"ambiguous": 1}
    queued(timedelta(hours=1))
    assert drain(app_factory, transport)[0] == {} and transport.outbox == []
    assert _row(app_factory).status == "ambiguous"


def test_expired_leases_come_back_and_a_death_mid_send_is_ambiguous_under_hold(
    app_factory, queued, set_env
) -> None:  # type: ignore[no-untyped-def]
    set_env(ambiguous_policy="hold")
    with transaction(app_factory) as session:
        claim_due(session, limit=10, lease_seconds=60)  # a worker claimed it and died
    queued(timedelta(seconds=61))
    assert drain(app_factory)[0] == {"sent": 1}
    # A second signup whose worker died after "sending": never resent blindly.
    queued(timedelta(seconds=1))
    with transaction(app_factory) as session:
        subscriber_id = session.scalar(select(Subscriber.id))
        first = session.scalar(select(OutboxMessage))
        session.add(
            OutboxMessage(
                kind="confirm",
                subscriber_id=subscriber_id,
                consent_id=first.consent_id,
                status="sending",
                claim_token="dead",
                lease_until=clock.now() - timedelta(seconds=1),
            )
        )
    assert drain(app_factory)[0] == {}
    with transaction(app_factory) as session:
        assert (
            session.scalar(
                select(OutboxMessage.status)
                .where(OutboxMessage.claim_token.is_(None))
                .order_by(OutboxMessage.id.desc())
            )
            == "ambiguous"
        )


def test_a_death_mid_send_is_resent_once_by_default(app_factory, queued) -> None:  # type: ignore[no-untyped-def]
    """The default policy: the one confirmation whose fate a crash made unknown goes again, once."""
    with transaction(app_factory) as session:
        token, _ids = claim_due(session, limit=10, lease_seconds=60)
        session.execute(update(OutboxMessage).values(status="sending", claim_token=token, attempts=1))
    queued(timedelta(seconds=61))
    sent, transport = drain(app_factory)
    assert sent == {"sent": 1} and len(transport) == 1
    with transaction(app_factory) as session:
        row = session.scalar(select(OutboxMessage))
        unknown = session.scalars(select(Event).where(Event.kind == "outbox-ambiguous")).all()
    assert row.status == "sent" and row.attempts == 2
    assert [(e.detail["outbox_id"], e.detail["resolution"]) for e in unknown] == [(row.id, "resent")]
    assert drain(app_factory)[0] == {}  # and only once


def test_suppressed_addresses_get_the_same_answer_but_no_email(
    prospect_client: TestClient, app_factory, queued
) -> None:  # type: ignore[no-untyped-def]
    with transaction(app_factory) as session:
        session.execute(update(OutboxMessage).values(status="sent"))
        session.add(Suppression(email="bounced@example.com", reason="complaint"))
    assert (
        prospect_client.post("/subscribe", json={"email": "bounced@example.com", "consent": True}).status_code
        == 202
    )
    assert drain(app_factory)[0] == {"skipped:suppressed": 1}


def test_the_celery_task_drains_through_the_configured_transport(app_factory, queued) -> None:  # type: ignore[no-untyped-def]
    from nurture.tasks import drain_outbox

    conf = create_app().conf
    assert conf.beat_schedule["drain-outbox"]["task"] == OUTBOX_TASK
    # With the ticks, not behind a campaign's send backlog.
    assert conf.task_routes[OUTBOX_TASK]["queue"] == DISPATCH_QUEUE
    MEMORY_OUTBOX.outbox.clear()
    assert drain_outbox() == {"sent": 1}  # NURTURE_SMTP_URL=memory:// in tests
    assert [m.recipient for m in MEMORY_OUTBOX.outbox] == ["ana@example.com"]
    MEMORY_OUTBOX.outbox.clear()


class OpenBreaker:
    """A breaker that someone else's failures have opened for the next 30 seconds."""

    def __init__(self) -> None:
        self.recorded: list[bool] = []

    def record(self, ok: bool) -> None:
        self.recorded.append(ok)

    def open_for(self) -> float:
        return 30.0


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0


def test_an_open_breaker_defers_confirmations_and_the_rate_limit_counts_them(app_factory, queued) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    transport = MemoryTransport()
    limiter = CountingLimiter()
    templates = EmailTemplates(settings.templates_dir)
    blocked = Outbox(settings, app_factory, transport, templates, limiter=limiter, breaker=OpenBreaker())
    assert blocked.drain() == {"deferred": 1}
    row = _row(app_factory)
    assert (row.status, row.claim_token, row.attempts) == ("pending", None, 0)
    assert row.due_at == START + timedelta(seconds=30) and transport.outbox == [] and limiter.acquired == 0

    queued(timedelta(seconds=30))
    closed = Outbox(settings, app_factory, transport, templates, limiter=limiter)
    assert closed.drain() == {"sent": 1}
    assert len(transport.outbox) == 1 and limiter.acquired == 1
