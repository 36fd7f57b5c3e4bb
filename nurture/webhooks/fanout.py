"""Fan-out: read the event log after a cursor, make one webhook delivery per event per interested endpoint.

The send path never pays for webhooks, and a webhook exists only for a change that committed (its event row
committed with it). Ids are read in order, but on PostgreSQL a transaction that took a smaller id can commit
after one that took a larger id; a plain "id > cursor" would skip it for good. So the cursor also remembers
the ids it stepped over (gaps): each pump looks for them again, and forgets a gap only after
NURTURE_WEBHOOK_GAP_SECONDS (then it was a rolled-back transaction, whose id is never used). A unique
(endpoint, event) constraint makes any second look at an event harmless.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.config import Settings
from nurture.models import (
    Delivery,
    Enrollment,
    Event,
    Sequence,
    Step,
    Subscriber,
    WebhookCursor,
    WebhookDelivery,
    WebhookEndpoint,
)
from nurture.webhooks.event_types import PUBLIC_TYPES, envelope, public_detail

MAX_TRACKED_GAPS = 10_000  # a jump larger than this is a sequence reset or bulk rollback, not in-flight work


@dataclass(frozen=True)
class PumpResult:
    events: int  # events read (new ones and late ones)
    deliveries: int  # webhook deliveries created
    open_gaps: int
    caught_up: bool  # False: a full batch was read, more may be waiting


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def pump(session: Session, settings: Settings, *, limit: int = 1000) -> PumpResult:
    """One pass, in the caller's transaction; the cursor row is locked, so concurrent pumps queue."""
    now = clock.now()
    cursor = _locked_cursor(session, settings, now)
    gaps = {int(k): datetime.fromisoformat(v) for k, v in (cursor.gaps or {}).items()}
    # With no endpoint to send to, only the ids are read: the cursor and its gaps still move (an endpoint
    # made later wants the events committed after it, late ones included), but loading every sent event
    # as an object was a twentieth of a busy worker's CPU for nobody.
    wanted = session.scalar(select(exists().where(WebhookEndpoint.enabled.is_(True))))
    read = select(Event) if wanted else select(Event.id)
    late: list[Any] = []
    if gaps:
        late = list(session.scalars(read.where(Event.id.in_(list(gaps)))))
        for event in late:
            gaps.pop(_id_of(event), None)
    fresh = list(session.scalars(read.where(Event.id > cursor.last_event_id).order_by(Event.id).limit(limit)))
    expected = cursor.last_event_id + 1
    for event in fresh:
        event_id = _id_of(event)
        if event_id - expected <= MAX_TRACKED_GAPS:
            for missing in range(expected, event_id):
                gaps.setdefault(missing, now)
        expected = event_id + 1
    if fresh:
        cursor.last_event_id = _id_of(fresh[-1])
    settle = timedelta(seconds=settings.webhooks.webhook_gap_seconds)
    gaps = {k: v for k, v in gaps.items() if now - v < settle}
    if len(gaps) > MAX_TRACKED_GAPS:
        gaps = dict(sorted(gaps.items())[-MAX_TRACKED_GAPS:])
    cursor.gaps = {str(k): v.isoformat() for k, v in sorted(gaps.items())}
    cursor.updated_at = now
    created = fan_out(session, late + fresh) if wanted else 0
    return PumpResult(len(late) + len(fresh), created, len(gaps), len(fresh) < limit)


def _id_of(event: Event | int) -> int:
    return event if isinstance(event, int) else event.id


def _locked_cursor(session: Session, settings: Settings, now: datetime) -> WebhookCursor:
    cursor = session.scalar(select(WebhookCursor).where(WebhookCursor.id == 1).with_for_update())
    if cursor is not None:
        return cursor
    # First pump: events from before the first endpoint existed concern nobody, so start just below them
    # (minus the settle window, so a transaction still in flight then is not skipped).
    first_endpoint = session.scalar(select(func.min(WebhookEndpoint.created_at)))
    horizon = (first_endpoint or now) - timedelta(seconds=settings.webhooks.webhook_gap_seconds)
    start = session.scalar(select(func.max(Event.id)).where(Event.created_at < horizon)) or 0
    values = {"id": 1, "last_event_id": start, "gaps": {}, "updated_at": now}
    session.execute(_insert(session, WebhookCursor).values(**values).on_conflict_do_nothing())
    return session.scalars(
        select(WebhookCursor)
        .where(WebhookCursor.id == 1)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def fan_out(session: Session, events: list[Event]) -> int:
    published = [e for e in events if e.kind in PUBLIC_TYPES]
    if not published:
        return 0
    endpoints = list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True))))
    if not endpoints:
        return 0
    deliveries = _delivery_facts(session, [e.delivery_id for e in published if e.delivery_id])
    subscriber_ids = {e.subscriber_id for e in published if e.subscriber_id}
    subscriber_ids |= {facts["subscriber_id"] for facts in deliveries.values()}
    subscribers = {
        s.id: s for s in session.scalars(select(Subscriber).where(Subscriber.id.in_(subscriber_ids)))
    }
    rows = []
    for event in published:
        public_type = PUBLIC_TYPES[event.kind]
        wanted = [
            ep
            for ep in endpoints
            if public_type in (ep.event_types or []) and event.created_at >= ep.created_at
        ]
        if not wanted:
            continue
        facts = deliveries.get(event.delivery_id) if event.delivery_id else None
        subscriber_id = event.subscriber_id or (facts["subscriber_id"] if facts else None)
        data = payload_data(event, subscribers.get(subscriber_id) if subscriber_id else None, facts)
        body = envelope(public_type, event.created_at.isoformat(), data)
        for endpoint in wanted:
            rows.append(
                {
                    "endpoint_id": endpoint.id,
                    "event_id": event.id,
                    "subscriber_id": subscriber_id if subscriber_id in subscribers else None,
                    "message_id": new_message_id(),
                    "event_type": public_type,
                    "body": body,
                    "status": "pending",
                    "due_at": clock.now(),
                    "attempts": 0,
                    "created_at": clock.now(),
                }
            )
    if not rows:
        return 0
    # One statement executed with many parameter sets: SQLAlchemy batches it ("insertmanyvalues") and the
    # compiled form is cached, where a single VALUES list of a new length would be compiled every time.
    statement = (
        _insert(session, WebhookDelivery)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(WebhookDelivery.id)
    )
    return len(session.execute(statement, rows).all())


def payload_data(event: Event, subscriber: Subscriber | None, facts: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": event.id, **public_detail(event.detail)}
    if subscriber is not None:
        # The random public id, never the row id: receivers can match on it without learning our counts.
        data["subscriber"] = {"id": subscriber.public_id, "email": subscriber.email}
    if facts is not None:
        data["delivery"] = {
            "id": facts["id"],
            "sequence": facts["sequence"],
            "step": facts["step"],
            "position": facts["position"],
        }
    return data


def _delivery_facts(session: Session, delivery_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not delivery_ids:
        return {}
    rows = session.execute(
        select(Delivery.id, Delivery.subscriber_id, Step.key, Step.position, Sequence.slug)
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(Delivery.id.in_(set(delivery_ids)))
    )
    return {
        row.id: {
            "id": row.id,
            "subscriber_id": row.subscriber_id,
            "step": row.key,
            "position": row.position,
            "sequence": row.slug,
        }
        for row in rows
    }
