"""What a subscriber can change about their own emails: pause, resume, leave one sequence, resubscribe, and
their name and time zone.

Pausing *postpones* rather than holds: every email that has not started sending is rescheduled to start no
earlier than the end of the pause, so nothing has to wake up to end it (the schedule stays in the database;
no timer, no beat job). Resuming early, or changing time zone, reschedules from the enrollment's original
timetable, recomputed from its start: emails still in the future keep their original times, and ones that
fell due meanwhile go out from now on, spaced by their usual delays (never all at once).

Every function runs inside the caller's transaction, which should hold the subscriber row locked (``FOR
UPDATE``) so a worker's pre-send check cannot interleave with the change.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
    events,
)
from nurture.sequences import timetable
from nurture.subscribers.enrollment import end_enrollment, enroll

# Rows that have not started sending: a pause or resume may move them.
MOVABLE = (DeliveryStatus.pending, DeliveryStatus.queued, DeliveryStatus.held)
# Cancellations a subscriber may undo by signing up again or resubscribing.
REOPENABLE_REASONS = ("unsubscribed", "left")
PAUSE_CHOICES = {7: "1 week", 14: "2 weeks", 30: "1 month", 90: "3 months"}


class PreferenceError(ValueError):
    pass


def _live_enrollments(session: Session, subscriber: Subscriber) -> list[Enrollment]:
    return list(
        session.scalars(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber.id, Enrollment.status == EnrollmentStatus.active)
            .order_by(Enrollment.id)
        )
    )


def reschedule(session: Session, enrollment: Enrollment, not_before: datetime) -> int:
    """Move this enrollment's unsent emails so the first is due no earlier than ``not_before``."""
    rows = list(
        session.execute(
            select(Delivery, Step)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.enrollment_id == enrollment.id, Delivery.status.in_(MOVABLE))
            .order_by(Step.position)
        ).all()
    )
    if not rows:
        return 0
    version = enrollment.version
    steps = list(version.steps)
    subscriber = enrollment.subscriber
    table = timetable.of_version(version, subscriber.timezone, timetable.country_of(subscriber.attributes))
    original = dict(zip((s.id for s in steps), table.due_times(enrollment.enrolled_at, steps), strict=True))
    anchor = max(original[rows[0][1].id], not_before)
    # The first unsent email goes at the anchor (fitted to its own window rule); the rest keep their delays.
    chain = [timetable.StepTiming(timedelta(0), rows[0][1].use_window)] + [step for _, step in rows[1:]]
    moved = 0
    for (delivery, _), due in zip(rows, table.due_times(anchor, chain), strict=True):
        # Conditional per row: a worker that already moved a claimed row to "sending" keeps it.
        moved += (
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery.id, Delivery.status.in_(MOVABLE))
                .values(status=DeliveryStatus.pending, due_at=due, claim_token=None, lease_until=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            or 0
        )
    return moved


def start_time(subscriber: Subscriber) -> datetime:
    """When new emails for this subscriber may start: now, or the end of their pause."""
    now = clock.now()
    return subscriber.paused_until if subscriber.paused_until and subscriber.paused_until > now else now


def pause(session: Session, subscriber: Subscriber, days: int) -> datetime:
    if days not in PAUSE_CHOICES:
        raise PreferenceError("choose one of the offered pause lengths")
    until = clock.now() + timedelta(days=days)
    subscriber.paused_until = until
    for enrollment in _live_enrollments(session, subscriber):
        reschedule(session, enrollment, until)
    events.record(session, "paused", subscriber_id=subscriber.id, until=until.isoformat())
    return until


def resume(session: Session, subscriber: Subscriber) -> None:
    subscriber.paused_until = None
    for enrollment in _live_enrollments(session, subscriber):
        reschedule(session, enrollment, clock.now())
    events.record(session, "resumed", subscriber_id=subscriber.id)


def leave_sequence(session: Session, subscriber: Subscriber, enrollment_id: int) -> Enrollment:
    enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None or enrollment.subscriber_id != subscriber.id:
        raise PreferenceError("no such course")
    if enrollment.status in (EnrollmentStatus.active, EnrollmentStatus.paused):
        end_enrollment(session, enrollment, status=EnrollmentStatus.cancelled, reason="left")
        events.record(
            session, "left-sequence", subscriber_id=subscriber.id, sequence=enrollment.sequence.slug
        )
    return enrollment


def update_profile(
    session: Session, subscriber: Subscriber, first_name: str | None, timezone: str | None
) -> None:
    """Values must already be validated (see :mod:`nurture.subscribers.signup`); a new zone re-times unsent
    emails."""
    zone_changed = (timezone or None) != subscriber.timezone
    if not zone_changed and first_name == subscriber.first_name:
        return
    subscriber.first_name = first_name
    subscriber.timezone = timezone or None
    if zone_changed:
        session.flush()
        for enrollment in _live_enrollments(session, subscriber):
            reschedule(session, enrollment, start_time(subscriber))
    events.record(session, "profile-updated", subscriber_id=subscriber.id)


def enroll_or_reopen(session: Session, subscriber: Subscriber, sequence: Sequence) -> Enrollment:
    """Enroll, or continue an enrollment the subscriber had left, where they left it."""
    existing = session.scalar(
        select(Enrollment).where(
            Enrollment.subscriber_id == subscriber.id, Enrollment.sequence_id == sequence.id
        )
    )
    if existing is None:
        return enroll(session, subscriber, sequence, at=start_time(subscriber))
    if existing.status == EnrollmentStatus.cancelled and existing.end_reason in REOPENABLE_REASONS:
        _reopen(session, existing, start_time(subscriber))
    return existing


def _reopen(session: Session, enrollment: Enrollment, not_before: datetime) -> None:
    enrollment.status = EnrollmentStatus.active
    enrollment.ended_at = None
    enrollment.end_reason = None
    session.execute(
        update(Delivery)
        .where(
            Delivery.enrollment_id == enrollment.id,
            Delivery.status == DeliveryStatus.cancelled,
            Delivery.skip_reason.in_(REOPENABLE_REASONS),
        )
        .values(status=DeliveryStatus.held, skip_reason=None)
        .execution_options(synchronize_session=False)
    )
    reschedule(session, enrollment, not_before)  # held -> pending, re-timed
    events.record(
        session, "reopened", subscriber_id=enrollment.subscriber_id, sequence=enrollment.sequence.slug
    )


def reactivate(session: Session, subscriber: Subscriber) -> None:
    """Pending or unsubscribed -> active (after a confirmed signup or a resubscribe)."""
    if subscriber.status != SubscriberStatus.active:
        subscriber.status = SubscriberStatus.active
        subscriber.confirmed_at = subscriber.confirmed_at or clock.now()
        subscriber.unsubscribed_at = None
        session.flush()


def resubscribe(session: Session, subscriber: Subscriber) -> int:
    """Undo an unsubscribe: active again, and every enrollment the unsubscribe ended continues."""
    if subscriber.status != SubscriberStatus.unsubscribed:
        return 0
    reactivate(session, subscriber)
    ended = list(
        session.scalars(
            select(Enrollment).where(
                Enrollment.subscriber_id == subscriber.id,
                Enrollment.status == EnrollmentStatus.cancelled,
                Enrollment.end_reason == "unsubscribed",
            )
        )
    )
    for enrollment in ended:
        _reopen(session, enrollment, start_time(subscriber))
    events.record(session, "resubscribed", subscriber_id=subscriber.id)
    return len(ended)
