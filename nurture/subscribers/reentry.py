"""Re-entry: what a confirmed signup does for someone who has been in the sequence before.

Per sequence (``nurture.sequences.policy``): ``reentry`` says whether someone whose enrollment *ended* may
start again (``once``: never; ``after``: once ``reentry_cooldown`` has passed since it ended; ``always``), and
``on_resignup`` what happens when they are *still* enrolled (``ignore``: carry on as they are; ``restart``:
end it, reason "restarted", and start from the first email).

An enrollment the subscriber interrupted themselves (unsubscribed, left the course) is not over: signing up
again continues it where it stopped, or with ``restart`` starts afresh. One that staff removed stays ended
whatever the policy. Every decision is an ``enrollment_reentry`` event in the explain log.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Subscriber,
    events,
)
from nurture.sequences.policy import Policy
from nurture.subscribers.enrollment import end_enrollment, enroll
from nurture.subscribers.preferences import REOPENABLE_REASONS, _reopen, start_time

# Rows that still have work to do: an enrollment with none of these has run its course.
UNFINISHED = (
    DeliveryStatus.pending,
    DeliveryStatus.queued,
    DeliveryStatus.sending,
    DeliveryStatus.held,
    DeliveryStatus.ambiguous,
)
FINISHED = "finished"  # every email was sent (or skipped): end_reason when a signup finds it so
FINAL_REASONS = ("removed-by-staff",)  # a signup never undoes these


def latest_enrollment(session: Session, subscriber_id: int, sequence_id: int) -> Enrollment | None:
    return session.scalar(
        select(Enrollment)
        .where(Enrollment.subscriber_id == subscriber_id, Enrollment.sequence_id == sequence_id)
        .order_by(Enrollment.id.desc())
        .limit(1)
    )


def close_if_finished(session: Session, enrollment: Enrollment) -> bool:
    """Mark a live enrollment with nothing left to send completed ("finished"), ended at its last send."""
    unfinished = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.enrollment_id == enrollment.id, Delivery.status.in_(UNFINISHED))
    )
    if unfinished:
        return False
    last = session.scalar(select(func.max(Delivery.sent_at)).where(Delivery.enrollment_id == enrollment.id))
    end_enrollment(session, enrollment, status=EnrollmentStatus.completed, reason=FINISHED)
    enrollment.ended_at = last or enrollment.ended_at
    return True


def enroll_on_signup(session: Session, subscriber: Subscriber, sequence: Sequence) -> Enrollment | None:
    """Apply the sequence's re-entry policy to a confirmed signup; the enrollment they are now in (None if
    refused). Raises :class:`nurture.subscribers.enrollment.EnrollmentError` like :func:`enroll`."""
    version = sequence.current_version
    policy = Policy.of(version.definition if version is not None else None)
    latest = latest_enrollment(session, subscriber.id, sequence.id)
    if latest is None:
        return enroll(session, subscriber, sequence, at=start_time(subscriber))

    def decide(decision: str, enrollment: Enrollment | None, **detail: object) -> Enrollment | None:
        events.record(
            session,
            "enrollment_reentry",
            subscriber_id=subscriber.id,
            sequence=sequence.slug,
            decision=decision,
            reentry=policy.reentry,
            on_resignup=policy.on_resignup,
            previous_enrollment_id=latest.id,
            previous_status=latest.status,
            previous_reason=latest.end_reason,
            enrollment_id=enrollment.id if enrollment is not None else None,
            **detail,
        )
        return enrollment

    def fresh() -> Enrollment:
        return enroll(session, subscriber, sequence, at=start_time(subscriber), fresh=True)

    live = latest.status in (EnrollmentStatus.active, EnrollmentStatus.paused)
    if live and not close_if_finished(session, latest):
        if policy.on_resignup == "restart":
            end_enrollment(session, latest, status=EnrollmentStatus.cancelled, reason="restarted")
            return decide("restarted", fresh())
        return decide("ignored-already-enrolled", latest)

    if latest.status == EnrollmentStatus.cancelled and latest.end_reason in REOPENABLE_REASONS:
        if policy.on_resignup == "restart":
            return decide("restarted", fresh())
        _reopen(session, latest, start_time(subscriber))
        return decide("continued", latest)

    if latest.end_reason in FINAL_REASONS:
        return decide(f"refused-{latest.end_reason}", None)
    if policy.reentry == "always":
        return decide("reentered", fresh())
    if policy.reentry == "after" and policy.reentry_cooldown is not None:
        eligible_at: datetime = (latest.ended_at or latest.enrolled_at) + policy.reentry_cooldown
        if clock.now() >= eligible_at:
            return decide("reentered", fresh(), cooldown_ended_at=eligible_at.isoformat())
        return decide("refused-cooldown", None, eligible_at=eligible_at.isoformat())
    return decide("refused-once", None)
