"""What staff may do to one subscriber: pause until a date, resume, unsubscribe, resubscribe (with fresh
consent only), remove from one sequence, erase (GDPR), and export everything we hold about them (JSON).

Shared by the web UI, the JSON API and the CLI, so the three cannot drift apart. :func:`act` locks the
subscriber row, applies the action, records an event (so it shows in the explain log) and an audit row with
the state before and after, all in the caller's one transaction.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import (
    ConsentRecord,
    Delivery,
    Enrollment,
    EnrollmentStatus,
    Event,
    OutboxMessage,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
    events,
)
from nurture.staff import accounts
from nurture.subscribers import preferences
from nurture.subscribers.enrollment import end_enrollment
from nurture.subscribers.enrollment import unsubscribe as unsubscribe_everywhere
from nurture.subscribers.erasure import erase as erase_everything
from nurture.subscribers.exports import export_csv
from nurture.subscribers.suppression import suppressed_among

MAX_PAUSE = timedelta(days=366)
MAX_NOTE = 1000
MAX_SOURCE = 100
REMOVED = "removed-by-staff"  # not in preferences.REOPENABLE_REASONS: a new signup does not undo it
ACTIONS = ("pause", "resume", "unsubscribe", "resubscribe", "remove", "erase")


class ActionError(ValueError):
    """A refused action; ``code`` maps to the HTTP status (invalid 400, not_found 404, conflict 409)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def lock(session: Session, subscriber_id: int) -> Subscriber:
    """The subscriber, row-locked so a worker's pre-send check cannot interleave with the change."""
    subscriber = session.scalar(select(Subscriber).where(Subscriber.id == subscriber_id).with_for_update())
    if subscriber is None:
        raise ActionError("not_found", "there is no such subscriber")
    return subscriber


def find_by_email(session: Session, email: str) -> Subscriber:
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email.strip().lower()))
    if subscriber is None:
        raise ActionError("not_found", f"no subscriber {email.strip().lower()}")
    return subscriber


def snapshot(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    """The state an action can change, for the audit log (no name, no attributes: keep personal data out)."""
    session.flush()
    enrollments = session.execute(
        select(Sequence.slug, Enrollment.status)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(Enrollment.subscriber_id == subscriber.id)
        .order_by(Sequence.slug)
    ).all()
    return {
        "status": subscriber.status,
        "paused_until": subscriber.paused_until.isoformat() if subscriber.paused_until else None,
        "enrollments": {slug: status for slug, status in enrollments},
    }


def act(
    session: Session, actor: accounts.Actor | None, subscriber_id: int, action: str, **params: Any
) -> dict[str, Any]:
    """Apply one staff action to one subscriber, audited before/after; returns a summary for the caller."""
    handlers: dict[str, Callable[..., dict[str, Any]]] = {
        "pause": pause,
        "resume": resume,
        "unsubscribe": unsubscribe,
        "resubscribe": resubscribe,
        "remove": remove_from_sequence,
        "erase": erase,
    }
    if action not in handlers:
        raise ActionError("invalid", f"unknown action {action!r}")
    subscriber = lock(session, subscriber_id)
    before = snapshot(session, subscriber)
    by = actor.email if actor else "cli"
    result = handlers[action](session, subscriber, by=by, **params)
    after = {"erased": True} if action == "erase" else snapshot(session, subscriber)
    accounts.audit(session, actor, f"subscriber.{action}", f"subscriber:{subscriber_id}", before, after)
    return {"id": subscriber_id, "action": action, **result}


def parse_until(value: Any) -> datetime:
    """A pause end as an aware instant in the future, at most a year ahead."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ActionError("invalid", f"until: {value!r} is not an ISO 8601 date-time") from None
    else:
        raise ActionError("invalid", "give the date and time the pause ends")
    if moment.tzinfo is None:
        raise ActionError("invalid", "until needs a time zone offset, e.g. 2026-12-01T09:00:00Z")
    return moment


def pause(session: Session, subscriber: Subscriber, *, by: str, until: Any) -> dict[str, Any]:
    """Postpone every unsent email so the next one is due no earlier than ``until`` (the same mechanism as
    the subscriber's own pause: nothing has to wake up to end it, and no step is skipped)."""
    moment = parse_until(until)
    now = clock.now()
    if moment <= now:
        raise ActionError("invalid", "the pause must end in the future")
    if moment > now + MAX_PAUSE:
        raise ActionError("invalid", "a pause can last at most a year")
    if subscriber.status != SubscriberStatus.active:
        raise ActionError("conflict", f"the subscriber is {subscriber.status}, not active")
    subscriber.paused_until = moment
    moved = 0
    for enrollment in preferences._live_enrollments(session, subscriber):
        moved += preferences.reschedule(session, enrollment, moment)
    events.record(session, "paused", subscriber_id=subscriber.id, until=moment.isoformat(), by=by)
    return {"paused_until": moment.isoformat(), "moved": moved}


def resume(session: Session, subscriber: Subscriber, *, by: str) -> dict[str, Any]:
    if subscriber.paused_until is None or subscriber.paused_until <= clock.now():
        raise ActionError("conflict", "the subscriber is not paused")
    subscriber.paused_until = None
    moved = 0
    for enrollment in preferences._live_enrollments(session, subscriber):
        moved += preferences.reschedule(session, enrollment, clock.now())
    events.record(session, "resumed", subscriber_id=subscriber.id, by=by)
    return {"moved": moved}


def unsubscribe(session: Session, subscriber: Subscriber, *, by: str) -> dict[str, Any]:
    if subscriber.status == SubscriberStatus.unsubscribed:
        raise ActionError("conflict", "the subscriber is already unsubscribed")
    cancelled = unsubscribe_everywhere(session, subscriber, f"staff:{by}")
    return {"cancelled": cancelled}


def resubscribe(
    session: Session, subscriber: Subscriber, *, by: str, consent_source: Any = None, note: Any = None
) -> dict[str, Any]:
    """Only with fresh consent: staff say where and how the person consented again, and that is recorded
    as a consent record before anything is sent. Never for a suppressed or erased address."""
    source = consent_source.strip() if isinstance(consent_source, str) else ""
    text = note.strip() if isinstance(note, str) else ""
    if not source or len(source) > MAX_SOURCE:
        raise ActionError(
            "invalid",
            f"consent_source is required (1 to {MAX_SOURCE} characters): where they consented again",
        )
    if len(text) > MAX_NOTE:
        raise ActionError("invalid", f"the note must be at most {MAX_NOTE} characters")
    if subscriber.status != SubscriberStatus.unsubscribed:
        raise ActionError("conflict", f"the subscriber is {subscriber.status}, not unsubscribed")
    if suppressed_among(session, [subscriber.email]):
        raise ActionError("conflict", "the address is suppressed (bounced, complained or erased)")
    now = clock.now()
    session.add(
        ConsentRecord(
            subscriber_id=subscriber.id,
            source="staff-resubscribe",
            consent_version="staff",
            consent_text=f"Resubscribed by {by}; consent obtained: {source}"
            + (f". Note: {text}" if text else ""),
            first_name=subscriber.first_name,
            timezone=subscriber.timezone,
            confirmed_at=now,
        )
    )
    reopened = preferences.resubscribe(session, subscriber)
    events.record(session, "staff-resubscribed", subscriber_id=subscriber.id, by=by, consent_source=source)
    return {"reopened": reopened}


def remove_from_sequence(
    session: Session, subscriber: Subscriber, *, by: str, sequence: Any = None
) -> dict[str, Any]:
    """End one enrollment and cancel its unsent emails; the rest of the subscriber's mail is untouched."""
    if not isinstance(sequence, str) or not sequence.strip():
        raise ActionError("invalid", "say which sequence to remove them from")
    enrollment = session.scalar(
        select(Enrollment)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(Enrollment.subscriber_id == subscriber.id, Sequence.slug == sequence.strip())
        .order_by(
            Enrollment.id.desc()
        )  # re-entry (nurture.subscribers.reentry) can leave several: the latest counts
        .limit(1)
    )
    if enrollment is None:
        raise ActionError("not_found", f"the subscriber is not enrolled in {sequence.strip()!r}")
    if enrollment.status not in (EnrollmentStatus.active, EnrollmentStatus.paused):
        raise ActionError("conflict", f"that enrollment is already {enrollment.status}")
    # The exit as integrations see it (enrollment_exited, docs/webhooks.md) comes with ending it.
    cancelled = end_enrollment(session, enrollment, status=EnrollmentStatus.cancelled, reason=REMOVED)
    events.record(session, "removed-from-sequence", subscriber_id=subscriber.id, sequence=sequence, by=by)
    return {"sequence": sequence.strip(), "cancelled": cancelled}


def erase(session: Session, subscriber: Subscriber, *, by: str) -> dict[str, Any]:
    """GDPR erasure (:func:`nurture.subscribers.erasure.erase`); the audit row keeps the id, never the
    address."""
    erase_everything(session, subscriber.email)
    session.expunge(subscriber)
    return {"erased": True}


# --- data export ----------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def delivery_fields(delivery: Delivery, step_key: str, position: int) -> dict[str, Any]:
    """One email as staff read it (the API's explain log and the subscriber's export both show this)."""
    return {
        "id": delivery.id,
        "step": step_key,
        "position": position,
        "status": delivery.status,
        "due_at": _iso(delivery.due_at),
        "sent_at": _iso(delivery.sent_at),
        "attempts": delivery.attempts,
        "skip_reason": delivery.skip_reason,
        "last_error": delivery.last_error,
    }


def profile(subscriber: Subscriber) -> dict[str, Any]:
    """What the staff API and the data export show of a subscriber's own record."""
    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "first_name": subscriber.first_name,
        "timezone": subscriber.timezone,
        "status": subscriber.status,
        "created_at": _iso(subscriber.created_at),
        "confirmed_at": _iso(subscriber.confirmed_at),
        "unsubscribed_at": _iso(subscriber.unsubscribed_at),
        "paused_until": _iso(subscriber.paused_until),
    }


def export_all_csv(session: Session, actor: accounts.Actor) -> str:
    """Every subscriber as CSV, audited (UI download and API)."""
    buffer = io.StringIO()
    count = export_csv(session, buffer)
    accounts.audit(session, actor, "subscribers.export", "subscribers", None, {"count": count})
    return buffer.getvalue()


def export_data(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    """Everything we hold about one person (GDPR access request): profile, attributes, consent records,
    enrollments with every delivery, events and confirmation emails. Nothing about anyone else."""
    consents = session.scalars(
        select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber.id).order_by(ConsentRecord.id)
    )
    enrollments = session.scalars(
        select(Enrollment).where(Enrollment.subscriber_id == subscriber.id).order_by(Enrollment.id)
    ).all()
    deliveries = session.execute(
        select(Delivery, Step.key, Step.position)
        .join(Step, Step.id == Delivery.step_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Delivery.enrollment_id, Step.position)
    ).all()
    delivery_ids = [d.id for d, _, _ in deliveries]
    event_filter = Event.subscriber_id == subscriber.id
    if delivery_ids:
        event_filter = or_(event_filter, Event.delivery_id.in_(delivery_ids))
    found_events = list(session.scalars(select(Event).where(event_filter).order_by(Event.id)))
    # Why a due time moved after enrolment (the frequency cap, nurture.delivery.frequency_cap): the latest
    # reason per row.
    moved = {ev.delivery_id: ev.detail.get("reason") for ev in found_events if ev.kind == "capped"}
    outbox = session.scalars(
        select(OutboxMessage).where(OutboxMessage.subscriber_id == subscriber.id).order_by(OutboxMessage.id)
    )
    by_enrollment: dict[int, list[dict[str, Any]]] = {}
    for delivery, key, position in deliveries:
        by_enrollment.setdefault(delivery.enrollment_id, []).append(
            {
                **delivery_fields(delivery, key, position),
                "message_id": delivery.message_id,
                "created_at": _iso(delivery.created_at),
                "variant": delivery.variant,
                "moved": moved.get(delivery.id),
            }
        )
    return {
        "exported_at": _iso(clock.now()),
        "profile": {**profile(subscriber), "public_id": subscriber.public_id},
        "attributes": subscriber.attributes or {},
        "consent_records": [
            {
                "id": c.public_id,
                "created_at": _iso(c.created_at),
                "source": c.source,
                "form_url": c.form_url,
                "consent_version": c.consent_version,
                "consent_text": c.consent_text,
                "sequence": c.sequence_slug,
                "first_name": c.first_name,
                "timezone": c.timezone,
                "ip": c.ip,
                "user_agent": c.user_agent,
                "confirmed_at": _iso(c.confirmed_at),
                "confirm_ip": c.confirm_ip,
                "confirm_user_agent": c.confirm_user_agent,
            }
            for c in consents
        ],
        "enrollments": [
            {
                "id": e.id,
                "sequence": e.sequence.slug,
                "version": e.version.number,
                "status": e.status,
                "enrolled_at": _iso(e.enrolled_at),
                "ended_at": _iso(e.ended_at),
                "end_reason": e.end_reason,
                "deliveries": by_enrollment.get(e.id, []),
            }
            for e in enrollments
        ],
        "events": [
            {
                "id": ev.id,
                "kind": ev.kind,
                "at": _iso(ev.created_at),
                "delivery_id": ev.delivery_id,
                "detail": ev.detail,
            }
            for ev in found_events
        ],
        "system_emails": [
            {
                "kind": m.kind,
                "status": m.status,
                "created_at": _iso(m.created_at),
                "sent_at": _iso(m.sent_at),
                "message_id": m.message_id,
            }
            for m in outbox
        ],
    }


def export_one(session: Session, actor: accounts.Actor | None, subscriber_id: int) -> dict[str, Any]:
    """The export, audited (reading someone's whole record is worth a line in the log)."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise ActionError("not_found", "there is no such subscriber")
    data = export_data(session, subscriber)
    accounts.audit(session, actor, "subscriber.export", f"subscriber:{subscriber_id}")
    return data
