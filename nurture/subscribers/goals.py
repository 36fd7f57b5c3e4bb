"""Goals and exit events: what ends an enrollment because the subscriber acted.

An event about a subscriber (``POST /api/v1/events``, or a click on a link marked ``data-goal``) is matched
against each of their live enrollments: a sequence that lists it under ``goals`` completes the enrollment
(reason "goal", attributed to the last email sent before it), one that lists it under ``exit_events`` ends it
(reason "exit-event:<name>"). Either way its unsent emails are cancelled in the same transaction.

The caller holds the subscriber row ``FOR UPDATE``: the sender re-checks a claimed delivery under a share
lock on the same row right before it moves it to "sending", so a goal either lands first (the delivery is
cancelled and the sender finds it no longer claimed) or after that email is on its way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from nurture.core.addresses import InvalidInput, normalise_email
from nurture.core.db import transaction
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    ExternalEvent,
    GoalCompletion,
    Step,
    Subscriber,
    events,
)
from nurture.sequences.policy import EVENT_NAME, Policy
from nurture.subscribers.enrollment import end_enrollment

# Unsent rows an ended enrollment must never send: claimed ones too (the sender's re-check finds them gone).
LIVE = (EnrollmentStatus.active, EnrollmentStatus.paused)
GOAL = "goal"
MAX_KEY = 200
MAX_PROPERTIES_BYTES = 10_000


class EventError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Reported:
    result: dict[str, Any]
    replayed: bool  # the idempotency key had been seen: this is the first report's result, nothing redone


def last_sent(session: Session, enrollment_id: int) -> tuple[int, int, str] | None:
    """(delivery id, step id, step key) of the enrollment's most recently sent email, or None."""
    row = session.execute(
        select(Delivery.id, Step.id, Step.key)
        .join(Step, Step.id == Delivery.step_id)
        .where(Delivery.enrollment_id == enrollment_id, Delivery.status == DeliveryStatus.sent)
        .order_by(Delivery.sent_at.desc(), Step.position.desc())
        .limit(1)
    ).first()
    return (row[0], row[1], row[2]) if row is not None else None


def meet_goal(session: Session, enrollment: Enrollment, goal: str) -> dict[str, Any]:
    before = last_sent(session, enrollment.id)
    delivery_id, step_id, step_key = before if before is not None else (None, None, None)
    session.add(
        GoalCompletion(
            enrollment_id=enrollment.id,
            subscriber_id=enrollment.subscriber_id,
            sequence_id=enrollment.sequence_id,
            goal=goal,
            step_id=step_id,
            delivery_id=delivery_id,
        )
    )
    events.record(
        session,
        "goal_met",
        subscriber_id=enrollment.subscriber_id,
        delivery_id=delivery_id,
        goal=goal,
        sequence=enrollment.sequence.slug,
        step_key=step_key,
        enrollment_id=enrollment.id,
    )
    cancelled = end_enrollment(session, enrollment, status=EnrollmentStatus.completed, reason=GOAL)
    return {
        "sequence": enrollment.sequence.slug,
        "enrollment_id": enrollment.id,
        "goal": goal,
        "step_key": step_key,
        "cancelled": cancelled,
    }


def apply_event(session: Session, subscriber: Subscriber, event: str, *, source: str) -> dict[str, Any]:
    """Complete or end every live enrollment for which ``event`` is a goal or an exit event.

    The caller must hold the subscriber row locked ``FOR UPDATE`` (see the module docstring)."""
    enrollments = session.scalars(
        select(Enrollment)
        .where(Enrollment.subscriber_id == subscriber.id, Enrollment.status.in_(LIVE))
        .options(joinedload(Enrollment.version), joinedload(Enrollment.sequence))
        .order_by(Enrollment.id)
    ).all()
    goals_met: list[dict[str, Any]] = []
    exited: list[dict[str, Any]] = []
    for enrollment in enrollments:
        policy = Policy.of(enrollment.version.definition)
        if event in policy.goals:
            goals_met.append(meet_goal(session, enrollment, event))
        elif event in policy.exit_events:
            reason = f"exit-event:{event}"
            cancelled = end_enrollment(session, enrollment, status=EnrollmentStatus.cancelled, reason=reason)
            exited.append(
                {
                    "sequence": enrollment.sequence.slug,
                    "enrollment_id": enrollment.id,
                    "reason": reason,
                    "cancelled": cancelled,
                }
            )
    events.record(
        session,
        "event_received",
        subscriber_id=subscriber.id,
        event=event,
        source=source,
        goals_met=len(goals_met),
        exited=len(exited),
    )
    return {"subscriber_id": subscriber.id, "event": event, "goals_met": goals_met, "exited": exited}


def lock_subscriber(session: Session, subscriber_id: int) -> Subscriber | None:
    return session.scalar(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


# --- reported events (POST /api/v1/events) ----------------------------------------------------------------


@dataclass(frozen=True)
class EventReport:
    email: str | None
    subscriber_id: int | None
    event: str
    properties: dict[str, Any]
    idempotency_key: str


def parse_report(body: Mapping[str, Any]) -> EventReport:
    """Validate a reported event's body, raising :class:`EventError` (400) naming the first problem."""

    def invalid(message: str) -> EventError:
        return EventError(400, "invalid", message)

    email, subscriber_id = body.get("email"), body.get("subscriber_id")
    if (email is None) == (subscriber_id is None):
        raise invalid('name the subscriber by "email" or by "subscriber_id" (one of them)')
    if email is not None:
        if not isinstance(email, str):
            raise invalid("email must be text")
        try:
            email = normalise_email(email)
        except InvalidInput as exc:
            raise invalid(f"email {exc.message}") from None
    if subscriber_id is not None and (
        isinstance(subscriber_id, bool) or not isinstance(subscriber_id, int) or not 0 < subscriber_id < 2**62
    ):
        raise invalid("subscriber_id must be a positive integer")
    event = body.get("event")
    if not isinstance(event, str) or not EVENT_NAME.match(event):
        raise invalid("event must be a name of lower-case letters, digits, '_', '.' or '-' (at most 48)")
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise invalid(f"idempotency_key is required: a unique text of at most {MAX_KEY} characters per event")
    properties = body.get("properties", {})
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise invalid("properties must be an object")
    if len(json.dumps(properties)) > MAX_PROPERTIES_BYTES:
        raise invalid(f"properties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON")
    return EventReport(email, subscriber_id, event, properties, key.strip())


def report_event(report: EventReport, factory: sessionmaker[Session] | None = None) -> Reported:
    """Record the event and apply it, once per idempotency key: the key's unique constraint, not a prior
    look-up, decides, so two concurrent reports with one key apply it once."""
    try:
        with transaction(factory) as session:
            return Reported(_report(session, report), replayed=False)
    except IntegrityError:
        pass
    with transaction(factory) as session:
        first = session.scalar(
            select(ExternalEvent).where(ExternalEvent.idempotency_key == report.idempotency_key)
        )
        if first is None:  # the conflicting report was rolled back meanwhile: this one is new after all
            return Reported(_report(session, report), replayed=False)
        if first.event != report.event or not _same_subscriber(session, first.subscriber_id, report):
            raise EventError(
                409, "conflict", "this idempotency_key was already used for a different event or subscriber"
            )
        return Reported(first.result, replayed=True)


def _same_subscriber(session: Session, subscriber_id: int, report: EventReport) -> bool:
    if report.subscriber_id is not None:
        return subscriber_id == report.subscriber_id
    return session.scalar(select(Subscriber.email).where(Subscriber.id == subscriber_id)) == report.email


def _report(session: Session, report: EventReport) -> dict[str, Any]:
    if report.subscriber_id is not None:
        subscriber = lock_subscriber(session, report.subscriber_id)
    else:
        subscriber = session.scalar(
            select(Subscriber).where(Subscriber.email == report.email).with_for_update()
        )
    if subscriber is None:
        raise EventError(404, "not_found", "no such subscriber")
    row = ExternalEvent(
        idempotency_key=report.idempotency_key,
        subscriber_id=subscriber.id,
        event=report.event,
        source="api",
        properties=report.properties,
        result={},
    )
    session.add(row)
    session.flush()  # the unique key is checked here, before anything takes effect
    result = apply_event(session, subscriber, report.event, source="api")
    row.result = result
    return result
