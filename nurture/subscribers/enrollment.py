"""Enroll subscribers in sequences and take them out again.

Enrolling writes one delivery row per step, with its due time, in the same transaction; the unique
(enrollment, step) constraint makes a second row for the same step impossible.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.addresses import clean_name, clean_zone, normalise_email
from nurture.models import (
    OPEN_DELIVERY_STATUSES,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    Subscriber,
    SubscriberStatus,
    events,
)
from nurture.sequences import timetable
from nurture.sequences.sync import get_sequence

UNSENT_STATUSES = (DeliveryStatus.pending, DeliveryStatus.queued, DeliveryStatus.held)


class EnrollmentError(ValueError):
    pass


def enroll(
    session: Session,
    subscriber: Subscriber,
    sequence: Sequence,
    at: datetime | None = None,
    *,
    fresh: bool = False,
) -> Enrollment:
    """Enroll in the sequence's current version, starting at ``at`` (default now).

    Without ``fresh`` an existing enrollment in the same sequence is returned unchanged (staff and import
    paths enroll once); :mod:`nurture.subscribers.reentry` decides when a signup may start a ``fresh`` one.
    """
    if subscriber.status != SubscriberStatus.active:
        raise EnrollmentError(f"subscriber is {subscriber.status}, not active")
    if sequence.status == SequenceStatus.archived:
        raise EnrollmentError(f"sequence {sequence.slug!r} is archived")
    if sequence.status == SequenceStatus.draft:
        raise EnrollmentError(f"sequence {sequence.slug!r} is a draft: publish it first")
    version = sequence.current_version
    if version is None:
        raise EnrollmentError(f"sequence {sequence.slug!r} has no version: run `nurture sequences sync`")
    existing = session.scalar(
        select(Enrollment)
        .where(Enrollment.subscriber_id == subscriber.id, Enrollment.sequence_id == sequence.id)
        .order_by(Enrollment.id.desc())
        .limit(1)
    )
    if existing is not None and not fresh:
        return existing
    anchor = at or clock.now()
    if sequence.status == SequenceStatus.scheduled and sequence.activate_at and anchor < sequence.activate_at:
        # Signups before a scheduled start begin at activation, with their whole timetable from then.
        anchor = sequence.activate_at
    enrollment = Enrollment(
        subscriber_id=subscriber.id, sequence_id=sequence.id, version_id=version.id, enrolled_at=anchor
    )
    session.add(enrollment)
    session.flush()
    table = timetable.of_version(version, subscriber.timezone, timetable.country_of(subscriber.attributes))
    steps = list(version.steps)
    due_times = table.due_times(anchor, steps)
    # Joining a paused sequence: the emails wait, held, for staff to resume it (nurture.sequences.control).
    initial = DeliveryStatus.held if sequence.status == SequenceStatus.paused else DeliveryStatus.pending
    session.add_all(
        Delivery(
            enrollment_id=enrollment.id,
            step_id=step.id,
            subscriber_id=subscriber.id,
            due_at=due,
            status=initial,
        )
        for step, due in zip(steps, due_times, strict=True)
    )
    events.record(
        session,
        "enrolled",
        subscriber_id=subscriber.id,
        sequence=sequence.slug,
        version=version.number,
        enrollment_id=enrollment.id,
    )
    session.flush()
    return enrollment


def add_subscriber(
    session: Session,
    email: str,
    *,
    first_name: str | None = None,
    timezone: str | None = None,
    sequence_slug: str | None = None,
    source: str = "staff",
) -> tuple[Subscriber, Enrollment | None]:
    """Staff adding someone directly: active at once (they vouch for consent), optionally enrolled."""
    address = normalise_email(email)
    name = clean_name(first_name)
    timezone = clean_zone(timezone)
    sequence = None
    if sequence_slug:
        sequence = get_sequence(session, sequence_slug)
        if sequence is None:
            raise EnrollmentError(
                f"no sequence {sequence_slug!r}: run `nurture sequences sync` or check the slug"
            )
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address))
    now = clock.now()
    if subscriber is None:
        subscriber = Subscriber(
            email=address,
            first_name=name,
            timezone=timezone or None,
            status=SubscriberStatus.active,
            confirmed_at=now,
            attributes={"source": source},
        )
        session.add(subscriber)
        session.flush()
        events.record(session, "subscribed", subscriber_id=subscriber.id, source=source)
    elif subscriber.status == SubscriberStatus.unsubscribed:
        # Someone who left is never re-activated by staff action: they must sign up again themselves.
        raise EnrollmentError(
            f"{address} unsubscribed on {subscriber.unsubscribed_at:%Y-%m-%d}; not re-adding"
        )
    else:
        subscriber.first_name = name or subscriber.first_name
        subscriber.timezone = timezone or subscriber.timezone
        if subscriber.status == SubscriberStatus.pending:
            subscriber.status = SubscriberStatus.active
            subscriber.confirmed_at = now
    enrollment = enroll(session, subscriber, sequence) if sequence is not None else None
    return subscriber, enrollment


def cancel_open_deliveries(session: Session, subscriber_id: int, reason: str) -> int:
    """Withdraw every delivery that has not started sending (held ones too: a paused sequence must not
    keep someone who left waiting to be mailed on resume), and end every live enrollment with ``reason``
    (unsubscribed, suppressed), so the reason shows on the enrollment and in the explain log; returns how
    many deliveries."""
    end_live_enrollments(session, subscriber_id, reason)
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_((*OPEN_DELIVERY_STATUSES, DeliveryStatus.held)),
        )
        .values(status=DeliveryStatus.cancelled, skip_reason=reason, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def unsubscribe(session: Session, subscriber: Subscriber, source: str) -> int:
    """Leave everything, in one transaction: status, every open delivery, every enrollment. Idempotent."""
    now = clock.now()
    if subscriber.status != SubscriberStatus.unsubscribed:
        subscriber.status = SubscriberStatus.unsubscribed
        subscriber.unsubscribed_at = now
        events.record(session, "unsubscribed", subscriber_id=subscriber.id, source=source)
    return cancel_open_deliveries(session, subscriber.id, "unsubscribed")


def end_enrollment(session: Session, enrollment: Enrollment, *, status: str, reason: str) -> int:
    """End one enrollment and cancel its unsent emails (claimed ones too: a claimed email is sent only
    while still ``queued`` under its claim), with the event integrations see; returns how many were
    cancelled. Goals, exits, leaving a course and staff removal all end enrollments here."""
    enrollment.status = status
    enrollment.ended_at = clock.now()
    enrollment.end_reason = reason
    cancelled = (
        session.execute(
            update(Delivery)
            .where(Delivery.enrollment_id == enrollment.id, Delivery.status.in_(UNSENT_STATUSES))
            .values(status=DeliveryStatus.cancelled, skip_reason=reason, lease_until=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        or 0
    )
    kind = "enrollment_completed" if status == EnrollmentStatus.completed else "enrollment_exited"
    events.record(
        session,
        kind,
        subscriber_id=enrollment.subscriber_id,
        reason=reason,
        sequence=enrollment.sequence.slug,
        enrollment_id=enrollment.id,
        cancelled=cancelled,
    )
    return cancelled


def end_live_enrollments(session: Session, subscriber_id: int, reason: str) -> list[int]:
    """Every active or paused enrollment of the subscriber -> cancelled with ``reason``, each with an
    ``enrollment_exited`` event; the caller cancels their deliveries. Returns the enrollment ids."""
    live = session.execute(
        select(Enrollment.id, Sequence.slug)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.status.in_([EnrollmentStatus.active, EnrollmentStatus.paused]),
        )
        .order_by(Enrollment.id)
    ).all()
    if not live:
        return []
    ids = [enrollment_id for enrollment_id, _ in live]
    session.execute(
        update(Enrollment)
        .where(Enrollment.id.in_(ids))
        .values(status=EnrollmentStatus.cancelled, ended_at=clock.now(), end_reason=reason)
        .execution_options(synchronize_session="fetch")
    )
    for enrollment_id, slug in live:
        events.record(
            session,
            "enrollment_exited",
            subscriber_id=subscriber_id,
            reason=reason,
            sequence=slug,
            enrollment_id=enrollment_id,
        )
    return ids
