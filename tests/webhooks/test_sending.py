"""Event -> signed POST to a real loopback server; verification with the sample verifier; retries with
growing backoff on the test clock; auto-disable; secret rotation; no redirects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import AuditLog, Event, Subscriber, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from nurture.subscribers.enrollment import add_subscriber, unsubscribe
from nurture.webhooks import endpoints
from nurture.webhooks.sending import JITTER, WebhookSender
from nurture.webhooks.verify import InvalidWebhook, verify
from tests.support.webhook_receiver import Script, WebhookReceiver

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def add_endpoint(factory: sessionmaker[Session], url: str, types: list[str]) -> tuple[int, str]:
    with transaction(factory) as session:
        endpoint, secret = endpoints.create(session, get_settings(), None, url=url, event_types=types)
        return endpoint.id, secret


def new_subscriber(factory: sessionmaker[Session], email: str = "ana@example.com") -> int:
    with transaction(factory) as session:
        subscriber, _ = add_subscriber(session, email, first_name="Ana")
        return subscriber.id


def sender_for(factory: sessionmaker[Session]) -> WebhookSender:
    return WebhookSender(get_settings(), factory)


def test_event_becomes_a_signed_delivery_that_the_sample_verifier_accepts(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    endpoint_id, secret = add_endpoint(factory, receiver.url, ["subscribed", "unsubscribed"])
    subscriber_id = new_subscriber(factory)
    with transaction(factory) as session:
        unsubscribe(session, session.get(Subscriber, subscriber_id), source="test")
    sender = sender_for(factory)
    try:
        outcomes = sender.tick()
    finally:
        sender.close()
    assert outcomes == {"succeeded": 2}
    assert [json.loads(r.body)["type"] for r in receiver.received] == ["subscribed", "unsubscribed"]
    for request in receiver.received:
        verify(request.body, request.headers, secret)  # raises if anything is off
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("msg_")
    body = json.loads(receiver.received[1].body)
    assert body["data"]["subscriber"]["email"] == "ana@example.com"
    assert body["data"]["subscriber"]["id"] != str(subscriber_id)  # the public id, not the row id
    assert "first_name" not in json.dumps(body)
    with transaction(factory) as session:
        rows = list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))
        assert [r.status for r in rows] == ["succeeded", "succeeded"]
        attempts = list(session.scalars(select(WebhookAttempt)))
        assert [a.status_code for a in attempts] == [200, 200]
        assert all(a.response_snippet == '{"received": true}' for a in attempts)
        assert session.get(WebhookEndpoint, endpoint_id).last_success_at is not None
    # Nothing new: a second tick sends nothing.
    sender = sender_for(factory)
    try:
        assert sender.tick() == {}
    finally:
        sender.close()
    assert len(receiver.received) == 2


def test_sample_verifier_rejects_replayed_old_timestamps_tampering_and_wrong_secrets(
    factory, receiver
) -> None:  # type: ignore[no-untyped-def]
    _, secret = add_endpoint(factory, receiver.url, ["subscribed"])
    new_subscriber(factory)
    sender = sender_for(factory)
    try:
        sender.tick()
    finally:
        sender.close()
    request = receiver.received[0]
    sent_at = int(request.headers["webhook-timestamp"])
    verify(request.body, request.headers, secret, now=sent_at + 299)
    with pytest.raises(InvalidWebhook, match="timestamp"):
        verify(request.body, request.headers, secret, now=sent_at + 301)  # captured and replayed later
    forged = dict(request.headers, **{"webhook-timestamp": str(sent_at + 400)})
    with pytest.raises(InvalidWebhook, match="signature"):
        verify(request.body, forged, secret, now=sent_at + 400)  # a fresh timestamp breaks the signature
    with pytest.raises(InvalidWebhook, match="signature"):
        verify(request.body.replace(b"subscribed", b"confirmed_"), request.headers, secret, now=sent_at)
    _, other = add_endpoint(factory, receiver.url, ["subscribed"])
    with pytest.raises(InvalidWebhook, match="signature"):
        verify(request.body, request.headers, other, now=sent_at)
    with pytest.raises(InvalidWebhook, match="missing"):
        verify(request.body, {}, secret)


def test_failing_endpoint_is_retried_with_growing_backoff_then_disabled(factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(webhook_disable_failures="3", webhook_disable_hours="1")
    schedule = get_settings().webhooks.webhook_retry_delays
    with WebhookReceiver(Script(default=500)) as failing, clock.frozen(START) as advance:
        endpoint_id, _ = add_endpoint(factory, failing.url, ["subscribed"])
        new_subscriber(factory)
        sender = sender_for(factory)
        gaps = []
        try:
            assert sender.tick() == {"retry": 1}
            while True:
                with transaction(factory) as session:
                    delivery = session.scalars(select(WebhookDelivery)).one()
                    endpoint = session.get(WebhookEndpoint, endpoint_id)
                if not endpoint.enabled:
                    break
                gaps.append((delivery.due_at - clock.now()).total_seconds())
                advance(delivery.due_at - clock.now() - timedelta(seconds=1))
                assert sender.tick() == {}, "sent before it was due"
                advance(timedelta(seconds=1))
                assert sender.tick() == {"retry": 1}
            # Disabled at the first failure that is both the 3rd in a row and an hour after the first:
            # attempts at 0, ~30 s, ~2.5 min, ~12.5 min, ~72.5 min.
            assert len(failing.received) == 5
            assert len(gaps) == 4
            for gap, planned in zip(gaps, schedule, strict=False):
                assert planned * (1 - JITTER) <= gap <= planned * (1 + JITTER)
            assert gaps == sorted(gaps)
            # Disabled: nothing more goes out even when the retry falls due.
            advance(timedelta(days=3))
            assert sender.tick() == {}
            assert len(failing.received) == 5
        finally:
            sender.close()
    with transaction(factory) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint.consecutive_failures == 5
        assert endpoint.disabled_reason.startswith("automatically: 5 failed attempts in a row")
        attempts = list(session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))
        assert [a.status_code for a in attempts] == [500] * 5
        assert attempts[0].response_snippet == "broken on purpose"
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "webhook.auto_disable")).one()
        assert audit.actor == "system" and audit.target == f"webhook:{endpoint_id}"
        assert session.scalar(select(Event.id).where(Event.kind == "webhook-disabled")) is not None


def test_retries_end_in_failed_and_a_success_resets_the_count(factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(webhook_retry_schedule="10,20", webhook_disable_failures="100")
    with WebhookReceiver(Script(statuses=[503, 503, 503, 200])) as flaky, clock.frozen(START) as advance:
        endpoint_id, _ = add_endpoint(factory, flaky.url, ["subscribed"])
        new_subscriber(factory, "one@example.com")
        sender = sender_for(factory)
        try:
            results = []
            for _ in range(3):
                results.append(sender.tick())
                advance(timedelta(seconds=30))
            assert results == [{"retry": 1}, {"retry": 1}, {"failed": 1}]
            with transaction(factory) as session:
                assert session.get(WebhookEndpoint, endpoint_id).consecutive_failures == 3
            new_subscriber(factory, "two@example.com")
            assert sender.tick() == {"succeeded": 1}
        finally:
            sender.close()
    with transaction(factory) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint.consecutive_failures == 0 and endpoint.failing_since is None
        statuses = list(session.scalars(select(WebhookDelivery.status).order_by(WebhookDelivery.id)))
        assert statuses == ["failed", "succeeded"]


def test_a_redirect_is_a_failure_and_is_not_followed(factory) -> None:  # type: ignore[no-untyped-def]
    with WebhookReceiver() as target, WebhookReceiver(Script(default=302)) as redirecting:
        redirecting.script.location = target.url
        add_endpoint(factory, redirecting.url, ["subscribed"])
        new_subscriber(factory)
        sender = sender_for(factory)
        try:
            assert sender.tick() == {"retry": 1}
        finally:
            sender.close()
        assert len(redirecting.received) == 1 and target.received == []
    with transaction(factory) as session:
        assert session.scalars(select(WebhookDelivery.last_error)).one() == "HTTP 302"


def test_rotation_signs_with_both_secrets_during_the_grace_period(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    endpoint_id, old = add_endpoint(factory, receiver.url, ["subscribed"])
    with transaction(factory) as session:
        _, new = endpoints.rotate_secret(session, get_settings(), None, endpoint_id)
    new_subscriber(factory)
    sender = sender_for(factory)
    try:
        sender.tick()
    finally:
        sender.close()
    request = receiver.received[0]
    assert len(request.headers["webhook-signature"].split()) == 2
    verify(request.body, request.headers, old)
    verify(request.body, request.headers, new)
    with transaction(factory) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert new not in endpoint.secret and old not in (endpoint.previous_secret or "")  # encrypted at rest
    # After the grace period only the new secret signs.
    with clock.frozen(clock.now() + timedelta(hours=25)):
        new_subscriber(factory, "later@example.com")
        sender = sender_for(factory)
        try:
            sender.tick()
        finally:
            sender.close()
    later = receiver.received[1]
    assert len(later.headers["webhook-signature"].split()) == 1
    verify(later.body, later.headers, new, now=int(later.headers["webhook-timestamp"]))
    with pytest.raises(InvalidWebhook):
        verify(later.body, later.headers, old, now=int(later.headers["webhook-timestamp"]))


def test_erasing_a_subscriber_erases_their_webhook_deliveries(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    from nurture.subscribers.erasure import erase

    add_endpoint(factory, receiver.url, ["subscribed"])
    new_subscriber(factory)
    sender = sender_for(factory)
    try:
        sender.tick()
    finally:
        sender.close()
    with transaction(factory) as session:
        assert erase(session, "ana@example.com")
    with transaction(factory) as session:
        assert list(session.scalars(select(WebhookDelivery))) == []
