"""Fan-out from the event log: the right events to the right endpoints, and, on PostgreSQL, events that
commit out of id order are neither skipped nor sent twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import Event, WebhookCursor, WebhookDelivery, events
from nurture.subscribers.enrollment import add_subscriber
from nurture.webhooks import endpoints, fanout

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
URL = "http://127.0.0.1:9/hooks"  # never contacted: these tests only fan out


def add_endpoint(factory: sessionmaker[Session], types: list[str]) -> int:
    with transaction(factory) as session:
        endpoint, _ = endpoints.create(session, get_settings(), None, url=URL, event_types=types)
        return endpoint.id


def pump(factory: sessionmaker[Session]) -> fanout.PumpResult:
    with transaction(factory) as session:
        return fanout.pump(session, get_settings())


def delivered_events(factory: sessionmaker[Session]) -> list[tuple[int, int | None, str]]:
    with transaction(factory) as session:
        rows = session.execute(
            select(
                WebhookDelivery.endpoint_id, WebhookDelivery.event_id, WebhookDelivery.event_type
            ).order_by(WebhookDelivery.endpoint_id, WebhookDelivery.event_id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_each_endpoint_gets_only_its_event_types_and_only_events_after_it_was_made(factory) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        with transaction(factory) as session:
            add_subscriber(session, "early@example.com")  # before any endpoint existed
        advance(timedelta(seconds=1))
        subscribed = add_endpoint(factory, ["subscribed"])
        everything = add_endpoint(factory, ["subscribed", "unsubscribed", "delivered"])
        advance(timedelta(seconds=1))
        with transaction(factory) as session:
            subscriber, _ = add_subscriber(session, "ana@example.com")
            events.record(
                session, "unsubscribed", subscriber_id=subscriber.id, source="test", ip="203.0.113.9"
            )
            events.record(session, "paused", subscriber_id=subscriber.id)  # not a public event
        result = pump(factory)
    assert result.deliveries == 3
    with transaction(factory) as session:
        ids = dict(
            session.execute(select(Event.kind, Event.id).where(Event.subscriber_id == subscriber.id)).all()
        )
        bodies = list(
            session.scalars(select(WebhookDelivery.body).where(WebhookDelivery.event_type == "unsubscribed"))
        )
    assert delivered_events(factory) == [
        (subscribed, ids["subscribed"], "subscribed"),
        (everything, ids["subscribed"], "subscribed"),
        (everything, ids["unsubscribed"], "unsubscribed"),
    ]
    assert '"source":"test"' in bodies[0] and "203.0.113.9" not in bodies[0]  # request details stay in
    assert pump(factory).deliveries == 0


def test_a_disabled_endpoint_gets_no_new_deliveries(factory) -> None:  # type: ignore[no-untyped-def]
    endpoint_id = add_endpoint(factory, ["subscribed"])
    with transaction(factory) as session:
        endpoints.set_enabled(session, None, endpoint_id, False)
        add_subscriber(session, "ana@example.com")
    assert pump(factory).deliveries == 0


def test_with_no_endpoint_enabled_the_cursor_still_moves_and_late_events_are_still_awaited(
    pg_factory,
) -> None:  # type: ignore[no-untyped-def]
    """The pump reads only ids then (nurture.webhooks.fanout.pump): the cursor passes the events without
    making deliveries, an out-of-order commit still leaves a gap to look at again, and an endpoint enabled
    later gets the events after it, not the ones it missed while off."""
    factory = pg_factory
    endpoint_id = add_endpoint(factory, ["subscribed"])
    with transaction(factory) as session:
        endpoints.set_enabled(session, None, endpoint_id, False)
        ana, _ = add_subscriber(session, "ana@example.com")
        ana_id = ana.id
    slow = factory()
    slow.begin()
    events.record(slow, "subscribed", subscriber_id=ana_id, source="slow")
    slow.flush()  # takes the smaller id now, commits later
    with transaction(factory) as fast:
        events.record(fast, "subscribed", subscriber_id=ana_id, source="fast")
    idle = pump(factory)
    assert idle.deliveries == 0 and idle.events == 2 and idle.open_gaps == 1
    slow.commit()
    slow.close()
    with transaction(factory) as session:
        last_seen = session.scalar(select(WebhookCursor.last_event_id))
        assert last_seen == session.scalar(select(func.max(Event.id)))
    late = pump(factory)
    assert late.deliveries == 0 and late.events == 1 and late.open_gaps == 0
    with transaction(factory) as session:
        endpoints.set_enabled(session, None, endpoint_id, True)
        events.record(session, "subscribed", subscriber_id=ana_id, source="after")
        after_id = session.scalar(select(func.max(Event.id)))
    assert pump(factory).deliveries == 1
    assert delivered_events(factory) == [(endpoint_id, after_id, "subscribed")]


def test_events_committed_out_of_id_order_are_fanned_out_exactly_once(pg_factory) -> None:  # type: ignore[no-untyped-def]
    """Two concurrent transactions: the one holding the smaller event id commits last."""
    factory = pg_factory
    add_endpoint(factory, ["subscribed"])
    with transaction(factory) as session:
        ana, _ = add_subscriber(session, "ana@example.com")
        ben, _ = add_subscriber(session, "ben@example.com")
        ana_id, ben_id = ana.id, ben.id
    assert pump(factory).deliveries == 2

    slow = factory()
    slow.begin()
    events.record(slow, "subscribed", subscriber_id=ana_id, source="slow")
    slow.flush()  # takes the smaller id now, commits later
    slow_id = slow.scalar(select(func.max(Event.id)))
    with transaction(factory) as fast:
        events.record(fast, "subscribed", subscriber_id=ben_id, source="fast")
    first = pump(factory)
    assert first.deliveries == 1 and first.open_gaps == 1
    slow.commit()
    slow.close()
    second = pump(factory)
    assert second.deliveries == 1 and second.open_gaps == 0
    assert pump(factory).deliveries == 0
    rows = delivered_events(factory)
    assert [event_id for _, event_id, _ in rows].count(slow_id) == 1
    assert len(rows) == len({event_id for _, event_id, _ in rows}) == 4


def test_a_gap_from_a_rolled_back_transaction_is_forgotten_after_the_settle_time(pg_factory) -> None:  # type: ignore[no-untyped-def]
    factory = pg_factory
    with clock.frozen(START + timedelta(minutes=1)) as advance:
        add_endpoint(factory, ["subscribed"])
        with transaction(factory) as session:
            ana, _ = add_subscriber(session, "ana@example.com")
            ana_id = ana.id
        pump(factory)
        doomed = factory()
        doomed.begin()
        events.record(doomed, "subscribed", subscriber_id=ana_id)
        doomed.flush()
        doomed.rollback()
        doomed.close()
        with transaction(factory) as session:
            events.record(session, "subscribed", subscriber_id=ana_id)
        assert pump(factory).open_gaps == 1
        advance(timedelta(seconds=get_settings().webhooks.webhook_gap_seconds - 1))
        assert pump(factory).open_gaps == 1
        advance(timedelta(seconds=2))
        assert pump(factory).open_gaps == 0
    with transaction(factory) as session:
        assert session.get(WebhookCursor, 1).gaps == {}
    assert len(delivered_events(factory)) == 2


def test_goal_met_payload_names_the_email_before_the_goal(factory, three_step) -> None:  # type: ignore[no-untyped-def]
    import json

    from nurture.models import Delivery
    from tests.support.helpers import sync_sequences

    sync_sequences(factory)
    add_endpoint(factory, ["goal_met"])
    with transaction(factory) as session:
        subscriber, enrollment = add_subscriber(session, "ana@example.com", sequence_slug="three-step")
        delivery = session.scalars(select(Delivery).where(Delivery.enrollment_id == enrollment.id)).first()
        # As nurture/subscribers/goals.py records it.
        events.record(
            session,
            "goal_met",
            subscriber_id=subscriber.id,
            delivery_id=delivery.id,
            goal="contacted",
            sequence="three-step",
            step_key="hello",
            enrollment_id=enrollment.id,
        )
    assert pump(factory).deliveries == 1
    with transaction(factory) as session:
        body = json.loads(session.scalars(select(WebhookDelivery.body)).one())
    assert body["type"] == "goal_met"
    data = body["data"]
    assert data["goal"] == "contacted" and data["step_key"] == "hello" and data["sequence"] == "three-step"
    assert data["delivery"] == {"id": delivery.id, "sequence": "three-step", "step": "hello", "position": 1}
    assert data["subscriber"]["email"] == "ana@example.com"
