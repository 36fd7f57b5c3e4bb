"""Group commits in the sender: one transaction per group of emails, and what a failure mid-group costs.

A group is marked ``sending`` in one transaction (which also records the previous group as sent), then its
emails are handed over one by one. These tests pin down the transaction count, and that a failure in the
middle of a group gives back exactly the emails that were not handed over. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email import message_from_bytes

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import engine_of, transaction
from nurture.delivery.circuit_breaker import BreakerPolicy, LocalBreaker
from nurture.delivery.dispatch import claim_due
from nurture.delivery.sender import Sender
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import (
    BeforeData,
    ConnectFailure,
    MemoryTransport,
    PermanentFailure,
    StoredMessage,
    Then,
    ready_for_data,
)
from nurture.models import Delivery, Event, Subscriber
from nurture.subscribers.enrollment import unsubscribe
from tests.support.helpers import deliveries, subscribe, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def world(factory, one_step, set_env):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


class ScriptedTransport(MemoryTransport):
    """Keeps what it accepts; ``fail_at`` maps a 1-based message number to the exception it raises."""

    def __init__(self, fail_at: dict[int, Exception] | None = None, on_send=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fail_at = fail_at or {}
        self.on_send = on_send
        self.attempts = 0

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        self.attempts += 1
        if self.on_send is not None:
            self.on_send(self.attempts, recipient)
        failure = self.fail_at.get(self.attempts)
        if failure is not None:
            raise failure
        ready_for_data(before_data)
        self.outbox.append(StoredMessage(envelope_from, recipient, data))


def fast_sender(factory: sessionmaker[Session], transport: ScriptedTransport, **kwargs) -> Sender:  # type: ignore[no-untyped-def]
    settings = get_settings()
    sender = Sender(settings, factory, transport, EmailTemplates(settings.templates_dir), **kwargs)
    sender._observe_smtp(0.0001)  # a server that answers in 0.1 ms: groups as large as allowed
    return sender


def claim_everything(factory: sessionmaker[Session], count: int) -> tuple[str, list[int]]:
    for number in range(count):
        subscribe(factory, f"p{number:03}@example.com", "one-step")
    with transaction(factory) as session:
        claim = claim_due(session, limit=1000, lease_seconds=600)
    assert len(claim.ids) == count
    return claim.token, claim.ids


@contextmanager
def counted_commits(factory: sessionmaker[Session]) -> Iterator[list[int]]:
    engine = engine_of(factory)
    commits = [0]

    def count(connection) -> None:  # type: ignore[no-untyped-def]
        commits[0] += 1

    event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", count)


def test_group_size_follows_the_measured_smtp_time(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(send_group_max=20, send_group_window_ms=50)
    settings = get_settings()
    sender = Sender(settings, None, MemoryTransport(), EmailTemplates(settings.templates_dir))  # type: ignore[arg-type]
    assert sender._group_size() == 1  # nothing measured yet: one email per transaction
    sender._smtp_seconds = 0.010
    assert sender._group_size() == 5  # 5 x 10 ms fit in the 50 ms window
    sender._smtp_seconds = 0.200
    assert sender._group_size() == 1  # a distant provider: one per transaction, as without groups
    sender._smtp_seconds = 0.0001
    assert sender._group_size() == 20  # a fast relay: capped by NURTURE_SEND_GROUP_MAX


def test_forty_emails_take_a_handful_of_commits_and_each_is_recorded_once(world, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(send_group_max=20)
    with clock.frozen(START):
        token, ids = claim_everything(world, 40)
        transport = ScriptedTransport()
        with counted_commits(world) as commits:
            outcomes = fast_sender(world, transport).send_batch(token, ids)
    assert outcomes == {"sent": 40}
    # The batch's read, two groups (each also recording the group before it), the last group's record: 4.
    # One transaction per email would be 41. (Each email's receipt, its "sent" event checked below, is one
    # autocommit INSERT on a connection of its own: nurture.delivery.receipts.)
    assert commits[0] <= 5, commits[0]
    rows = deliveries(world)
    assert {row.status for row in rows} == {"sent"} and {row.attempts for row in rows} == {1}
    sent_ids = {message_from_bytes(m.data)["Message-ID"] for m in transport.outbox}
    assert sent_ids == {row.message_id for row in rows} and len(sent_ids) == 40
    with transaction(world) as session:
        events = session.scalars(select(Event).where(Event.kind == "sent")).all()
    assert sorted(e.delivery_id for e in events) == sorted(ids)
    assert all(
        e.detail["message_id"] == next(r.message_id for r in rows if r.id == e.delivery_id) for e in events
    )


def test_an_unreachable_server_mid_group_gives_back_only_what_was_not_handed_over(world, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(send_group_max=20)
    with clock.frozen(START):
        token, ids = claim_everything(world, 10)
        transport = ScriptedTransport({4: ConnectFailure("connection refused")})
        outcomes = fast_sender(world, transport).send_batch(token, ids)
    assert outcomes == {"sent": 3, "deferred": 7}
    rows = deliveries(world)
    sent = [row for row in rows if row.status == "sent"]
    pending = [row for row in rows if row.status == "pending"]
    assert len(sent) == 3 and len(pending) == 7
    assert {message_from_bytes(m.data)["Message-ID"] for m in transport.outbox} == {
        r.message_id for r in sent
    }
    # Nothing was handed over for these: no attempt counted, due again after the retry interval, unclaimed.
    assert {row.attempts for row in pending} == {0}
    assert all(row.claim_token is None and row.due_at > START for row in pending)


def test_a_breaker_that_opens_mid_group_stops_the_rest_of_it(world, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(send_group_max=20)
    breaker = LocalBreaker(BreakerPolicy(threshold=0.5, min_volume=2, window=60, cooldown=60))
    with clock.frozen(START):
        token, ids = claim_everything(world, 8)
        transport = ScriptedTransport({2: PermanentFailure("550 no such user")})
        outcomes = fast_sender(world, transport, breaker=breaker).send_batch(token, ids)
    # Message 1 went, message 2 bounced: one failure in two attempts opens the breaker before message 3.
    assert outcomes == {"sent": 1, "failed": 1, "deferred": 6}
    assert len(transport.outbox) == 1 and transport.attempts == 2
    by_status: dict[str, int] = {}
    for row in deliveries(world):
        by_status[row.status] = by_status.get(row.status, 0) + 1
    assert by_status == {"sent": 1, "failed": 1, "pending": 6}


def test_an_unsubscribe_during_one_group_stops_the_next_groups_email(world, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(send_group_max=2)
    with clock.frozen(START):
        token, ids = claim_everything(world, 4)
        last = deliveries(world)[-1]

        def leave_during_first_send(attempt: int, recipient: str) -> None:
            if attempt == 1:  # another request, committed while the first group is being handed over
                with transaction(world) as session:
                    unsubscribe(session, session.get(Subscriber, last.subscriber_id), source="test")

        transport = ScriptedTransport(on_send=leave_during_first_send)
        outcomes = fast_sender(world, transport).send_batch(token, ids)
    assert outcomes == {"sent": 3, "not-claimed": 1}  # the unsubscribe cancelled the queued row itself
    assert "p003@example.com" not in {m.recipient for m in transport.outbox}
    with transaction(world) as session:
        assert session.get(Delivery, last.id).status == "cancelled"  # type: ignore[union-attr]


def test_a_receipt_that_cannot_be_written_stops_the_group_and_the_email_is_still_recorded(
    world, set_env
) -> None:  # type: ignore[no-untyped-def]
    """No email may go out after one whose receipt is missing (a crash would then leave two unknown): the
    rest of the group goes back to pending, and the accepted one is recorded sent with the group."""
    set_env(send_group_max=20)
    with clock.frozen(START):
        token, ids = claim_everything(world, 10)
        transport = ScriptedTransport()
        sender = fast_sender(world, transport)
        real_write = sender.receipts.write

        def fail_third(delivery_id: int, message_id: str, at: datetime) -> None:
            if len(transport.outbox) == 3:
                raise ConnectionError("database restarting")
            real_write(delivery_id, message_id, at)

        sender.receipts.write = fail_third  # type: ignore[method-assign]
        outcomes = sender.send_batch(token, ids)
    assert len(transport.outbox) == 3 and outcomes["sent"] == 2 and outcomes["deferred"] == 7
    rows = deliveries(world)
    assert [row.status for row in rows] == ["sent"] * 3 + ["pending"] * 7
    assert {row.attempts for row in rows[3:]} == {0}
    with transaction(world) as session:
        sent_events = sorted(session.scalars(select(Event.delivery_id).where(Event.kind == "sent")))
    assert sent_events == [row.id for row in rows[:3]]  # the third's written with the group's record


def test_a_receipt_in_flight_that_fails_holds_the_next_email_back(world, set_env) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL a receipt's answer is read once the next email's envelope is answered, before its data:
    if it cannot be stored then, the next email stays unsent (back to pending), and the one before is still
    recorded sent."""
    set_env(send_group_max=20)
    with clock.frozen(START):
        token, ids = claim_everything(world, 10)
        transport = ScriptedTransport()
        sender = fast_sender(world, transport)
        real_write, real_settle = sender.receipts.write, sender.receipts.settle
        failed: list[int] = []

        def write(delivery_id: int, message_id: str, at: datetime) -> None:
            real_write(delivery_id, message_id, at)
            if len(transport.outbox) == 3:
                failed.append(delivery_id)  # this one's answer will not come

        def settle() -> None:
            if len(failed) == 1:
                failed.append(-1)
                raise ConnectionError("database restarting")
            real_settle()

        sender.receipts.write = write  # type: ignore[method-assign]
        sender.receipts.settle = settle  # type: ignore[method-assign]
        outcomes = sender.send_batch(token, ids)
    assert failed and len(transport.outbox) == 3
    assert outcomes["sent"] == 3 and outcomes["deferred"] == 7
    rows = deliveries(world)
    assert [row.status for row in rows] == ["sent"] * 3 + ["pending"] * 7
    assert {row.attempts for row in rows[3:]} == {0}
