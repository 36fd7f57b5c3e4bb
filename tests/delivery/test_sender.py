"""Sending claimed deliveries in-process against a real SMTP server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.delivery.dispatch import claim_due
from nurture.models import Delivery, Event, Subscriber, Suppression
from nurture.subscribers.enrollment import unsubscribe
from tests.support.helpers import (
    deliveries,
    dispatch_inline,
    make_sender,
    statuses,
    subscribe,
    sync_sequences,
)
from tests.support.processes import SmtpScript, SmtpServer

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def world(factory, three_step, one_step, set_env):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


def test_three_steps_arrive_in_order_each_once_with_list_headers(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url)
        subscribe(world, "ana@example.com", "three-step", first_name="Ana")
        sender = make_sender(world)
        for _ in range(3):
            dispatch_inline(world, sender)
            advance(timedelta(seconds=1))
        dispatch_inline(world, sender)  # nothing left: must not send again
    assert [r.message["Subject"] for r in smtp.received] == [
        "Demo 1 of 3: your first nurture email",
        "Demo 2 of 3: the schedule lives in the database",
        "Demo 3 of 3: that is the whole sequence",
    ]
    assert statuses(world) == ["sent", "sent", "sent"]
    ids = [r.message["Message-ID"] for r in smtp.received]
    assert len(set(ids)) == 3
    assert ids == [d.message_id for d in deliveries(world)]
    message = smtp.received[0].message
    assert message.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in message.get_payload()]
    assert parts == ["text/plain", "text/html"]
    unsubscribe_header = message["List-Unsubscribe"]
    assert unsubscribe_header.startswith("<https://nurture.test/unsubscribe/")
    assert "<mailto:" in unsubscribe_header
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["To"] == "Ana <ana@example.com>"
    text = message.get_payload()[0].get_payload(decode=True).decode()
    assert "Hello Ana," in text and "https://nurture.test/unsubscribe/" in text
    assert smtp.received[0].rcpt_tos == ["ana@example.com"]


def test_451_then_250_is_sent_once_after_a_retry_with_growing_backoff(world, set_env):  # type: ignore[no-untyped-def]
    script = SmtpScript(data_replies=["451 4.3.0 try later", "451 4.3.0 try later again"])
    with SmtpServer(script) as smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url, retry_base_seconds="10")
        subscribe(world, "bo@example.com", "one-step")
        sender = make_sender(world)
        assert dispatch_inline(world, sender)["retry"] == 1
        first_retry = deliveries(world)[0]
        assert first_retry.status == "pending" and first_retry.attempts == 1
        assert first_retry.due_at == START + timedelta(seconds=10)
        assert dispatch_inline(world, sender).total() == 0  # not due yet
        advance(timedelta(seconds=10))
        assert dispatch_inline(world, sender)["retry"] == 1
        second_retry = deliveries(world)[0]
        assert second_retry.attempts == 2
        assert second_retry.due_at == START + timedelta(seconds=10 + 20)  # doubled
        advance(timedelta(seconds=20))
        assert dispatch_inline(world, sender)["sent"] == 1
    assert len(smtp.received) == 1
    sent = deliveries(world)[0]
    assert sent.status == "sent"
    assert sent.attempts == 3
    with transaction(world) as session:
        kinds = session.scalars(
            select(Event.kind).where(Event.delivery_id == sent.id).order_by(Event.id)
        ).all()
    assert kinds == ["retry", "retry", "sent"]


def test_a_sent_email_logs_at_debug_and_a_bounce_at_info(world, set_env, caplog):  # type: ignore[no-untyped-def]
    """A line per accepted email is debug (the `sent` event records it, the batch's line counts it); every
    other outcome stays one INFO line per email."""
    script = SmtpScript(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    with SmtpServer(script) as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(world, "gone@example.com", "one-step")
        subscribe(world, "here@example.com", "one-step")
        with caplog.at_level(logging.DEBUG, logger="nurture.delivery.sender"):
            assert dispatch_inline(world, make_sender(world)) == {"failed": 1, "sent": 1}
    lines = {
        r.getMessage().split()[1]: r.levelno for r in caplog.records if r.getMessage().startswith("delivery=")
    }
    assert lines == {"outcome=sent": logging.DEBUG, "outcome=bounced": logging.INFO}


def test_550_fails_suppresses_and_cancels_the_rest_without_raising(world, set_env):  # type: ignore[no-untyped-def]
    script = SmtpScript(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    with SmtpServer(script) as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(world, "gone@example.com", "three-step")
        subscribe(world, "here@example.com", "three-step")
        outcomes = dispatch_inline(world, make_sender(world))
    assert outcomes == {"failed": 1, "sent": 1}
    assert [r.rcpt_tos for r in smtp.received] == [["here@example.com"]]
    with transaction(world) as session:
        suppression = session.scalar(select(Suppression))
        assert suppression is not None and suppression.email == "gone@example.com"
        assert suppression.reason == "hard-bounce"
        gone = session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.com"))
        rows = session.scalars(select(Delivery).where(Delivery.subscriber_id == gone.id)).all()
        assert sorted(d.status for d in rows) == ["cancelled", "cancelled", "failed"]
        assert "550" in next(d.last_error for d in rows if d.status == "failed")


def test_unsubscribed_while_claimed_is_not_sent(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscriber_id = subscribe(world, "cy@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=10, lease_seconds=60)
        assert len(claim.ids) == 1
        with transaction(world) as session:
            unsubscribe(session, session.get(Subscriber, subscriber_id), source="test")
        outcome = make_sender(world).send_batch(claim.token, claim.ids)
    assert smtp.received == []
    assert outcome == {"not-claimed": 1}  # the unsubscribe cancelled the queued row itself
    assert statuses(world) == ["cancelled", "cancelled", "cancelled"]


def test_suppressed_while_claimed_is_skipped_with_its_reason(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(world, "di@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=10, lease_seconds=60)
            session.add(Suppression(email="di@example.com", reason="complaint"))
        outcome = make_sender(world).send_batch(claim.token, claim.ids)
    assert smtp.received == []
    assert outcome == {"skipped:suppressed": 1}
    first = deliveries(world)[0]
    assert (first.status, first.skip_reason) == ("skipped", "suppressed")


def test_unsubscribe_that_lands_while_rendering_wins(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscriber_id = subscribe(world, "ed@example.com", "three-step")
        sender = make_sender(world)
        real_render = sender.templates.render

        def render_then_unsubscribe(template, context, subject=None):  # type: ignore[no-untyped-def]
            rendered = real_render(template, context, subject)
            with transaction(world) as session:  # another request, committed mid-render
                unsubscribe(session, session.get(Subscriber, subscriber_id), source="test")
            return rendered

        sender.templates.render = render_then_unsubscribe  # type: ignore[method-assign]
        outcomes = dispatch_inline(world, sender)
    assert smtp.received == []
    assert outcomes == {"not-claimed": 1}
    assert set(statuses(world)) == {"cancelled"}


def test_connection_lost_after_data_is_held_under_the_hold_policy(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer(SmtpScript(drop_after_data=1)) as smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url, ambiguous_policy="hold")
        subscribe(world, "fi@example.com", "three-step")
        sender = make_sender(world)
        assert dispatch_inline(world, sender) == {"ambiguous": 1}
        advance(timedelta(hours=1))
        later = dispatch_inline(world, sender)
    first = deliveries(world)[0]
    assert first.status == "ambiguous"
    assert later == {"sent": 2}  # the other steps go on; the ambiguous one is held
    assert smtp.handler.data_attempts == 3


def test_ambiguous_policy_resend_sends_again(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer(SmtpScript(drop_after_data=1)) as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url, ambiguous_policy="resend")
        subscribe(world, "gu@example.com", "three-step")
        sender = make_sender(world)
        assert dispatch_inline(world, sender) == {"ambiguous": 1}
        assert dispatch_inline(world, sender) == {"sent": 1}
    ids = [r.message["Message-ID"] for r in smtp.received]
    assert len(ids) == 2 and ids[0] == ids[1]  # same Message-ID, so the receiver can drop the repeat


def test_a_redelivered_task_with_a_stale_claim_sends_nothing(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(world, "ha@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=10, lease_seconds=60)
        sender = make_sender(world)
        assert sender.send_batch(claim.token, claim.ids) == {"sent": 1}
        assert sender.send_batch(claim.token, claim.ids) == {"not-claimed": 1}
        assert sender.send_batch("someone-elses-token", claim.ids) == {"not-claimed": 1}
    assert len(smtp.received) == 1


def test_header_injection_in_a_stored_name_cannot_add_headers(world, set_env):  # type: ignore[no-untyped-def]
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(world, "iv@example.com", "three-step", first_name="Iv")
        with transaction(world) as session:  # as if an old row held a hostile name
            session.scalar(select(Subscriber)).first_name = "Iv\r\nBcc: victim@example.net"
        dispatch_inline(world, make_sender(world))
    message = message_from_bytes(smtp.received[0].data)
    assert message["Bcc"] is None
    assert smtp.received[0].rcpt_tos == ["iv@example.com"]
    assert "\n" not in message["To"]


@pytest.mark.parametrize(("claim_lease", "renewed"), [(60, True), (600, False)])
def test_a_batch_renews_its_lease_only_when_less_than_half_is_left(world, set_env, claim_lease, renewed):  # type: ignore[no-untyped-def]
    set_env(lease_seconds=300)
    with clock.frozen(START):
        subscribe(world, "lu@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=10, lease_seconds=claim_lease)
        with transaction(world) as session:
            make_sender(world)._prepare_batch(session, claim.token, claim.ids)
    [lease] = [d.lease_until for d in deliveries(world) if d.status == "queued"]
    # A row rewritten only to move its lease costs PostgreSQL a new entry in every index of the table.
    expected = START + timedelta(seconds=300 if renewed else claim_lease)
    assert lease == expected
