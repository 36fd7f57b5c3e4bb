"""The frequency cap across sequences: one person never gets emails from two different sequences less than
``NURTURE_FREQUENCY_CAP_HOURS`` apart (0: off). Within one sequence the step delays govern.

The dispatcher runs :func:`space_out` in its claim transaction, over the due rows it is about to claim, in due
order: a row whose subscriber had an email from another sequence less than the cap ago (sent, or claimed and
on its way, or in this same tick ahead of it) is *moved*, never skipped: its due time becomes that email's
time plus the cap, fitted into its own send window by nurture.sequences.timetable like any due time, with a
``capped`` event that says why (shown on the subscriber page). The cap is elapsed hours, so across a DST
change 12 hours are 12 real hours. The claim then takes only the rows that passed. When a moved row comes due
it is checked again, so it also waits for an email that went out late. Confirmation emails (the outbox) are
not deliveries and are never capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from nurture.core.db import among
from nurture.models import Delivery, DeliveryStatus, Enrollment, Sequence, events
from nurture.sequences import timetable

CAPPED = "capped"  # the event kind
# Claimed and on their way. (Not "ambiguous": one held for a person could wait for days and block the rest.)
IN_FLIGHT = (DeliveryStatus.queued, DeliveryStatus.sending)


@dataclass(frozen=True)
class _Email:
    sequence_id: int
    slug: str
    at: datetime  # sent, or when it goes (now, for one claimed or passing in this tick)


def space_out(session: Session, *, cap_hours: float, limit: int, now: datetime) -> list[int]:
    """Move the due rows that would break the cap; the ids of the first ``limit`` due rows that may go now."""
    # Ordered by due_at alone, as the claim is: the pending-due index then yields the first ``limit`` rows
    # directly. Ordering by (due_at, id) made PostgreSQL sort every due row on every tick, so a backlog of
    # 40,000 cost 83 ms per tick of 1,000 (docs/benchmarks.md). Ties are put in id order here, so the
    # decisions within one tick do not depend on the index's order.
    due = sorted(
        session.execute(
            select(
                Delivery.id, Delivery.subscriber_id, Delivery.due_at, Enrollment.sequence_id, Sequence.slug
            )
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .join(Sequence, Sequence.id == Enrollment.sequence_id)
            .where(Delivery.status == DeliveryStatus.pending, Delivery.due_at <= now)
            .order_by(Delivery.due_at)
            .limit(limit)
        ).all(),
        key=lambda row: (row.due_at, row.id),
    )
    if cap_hours <= 0 or not due:
        return [row.id for row in due]
    cap = timedelta(hours=cap_hours)
    recent: dict[int, list[_Email]] = {}
    for subscriber_id, sequence_id, slug, status, sent_at in session.execute(
        select(
            Delivery.subscriber_id, Enrollment.sequence_id, Sequence.slug, Delivery.status, Delivery.sent_at
        )
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(
            among(session, Delivery.subscriber_id, list({row.subscriber_id for row in due})),
            or_(
                and_(Delivery.status == DeliveryStatus.sent, Delivery.sent_at > now - cap),
                Delivery.status.in_(IN_FLIGHT),
            ),
        )
    ):
        at = sent_at if status == DeliveryStatus.sent and sent_at is not None else now
        recent.setdefault(subscriber_id, []).append(_Email(sequence_id, slug, at))
    passing: list[int] = []
    for row in due:
        others = [e for e in recent.get(row.subscriber_id, []) if e.sequence_id != row.sequence_id]
        last = max(others, key=lambda e: e.at, default=None)
        if last is None or last.at + cap <= now:
            passing.append(row.id)
            recent.setdefault(row.subscriber_id, []).append(_Email(row.sequence_id, row.slug, now))
            continue
        _move(session, row.id, row.due_at, last, cap)
    return passing


def _move(session: Session, delivery_id: int, due_at: datetime, last: _Email, cap: timedelta) -> None:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return
    # The subscriber's own window, zone and holidays, as for a retry (nurture.sequences.timetable decides).
    moved_to = timetable.retry_time(delivery, last.at + cap)
    _set_due(session, delivery_id, moved_to)
    # The enrollment's later steps move with it, so the spacing the author wrote holds (within a sequence
    # the delays govern).
    shift = moved_to - due_at
    later = session.scalars(
        select(Delivery).where(
            Delivery.enrollment_id == delivery.enrollment_id,
            Delivery.status == DeliveryStatus.pending,
            Delivery.due_at >= due_at,
            Delivery.id != delivery_id,
        )
    ).all()
    for step in later:
        _set_due(session, step.id, timetable.retry_time(step, step.due_at + shift))
    hours = f"{cap.total_seconds() / 3600:g}"
    events.record(
        session,
        CAPPED,
        subscriber_id=delivery.subscriber_id,
        delivery_id=delivery_id,
        reason=f"moved by the frequency cap: {last.slug!r} emailed them at {last.at.isoformat()}, "
        f"less than {hours} h before",
        moved_from=due_at.isoformat(),
        moved_to=moved_to.isoformat(),
        other_sequence=last.slug,
        later_steps_moved=len(later),
    )


def _set_due(session: Session, delivery_id: int, due_at: datetime) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending)
        .values(due_at=due_at)
        .execution_options(synchronize_session=False)
    )


def timeline_notice(cap_hours: float) -> str | None:
    """What a sequence's timeline says about the cap (a trial timeline shows one sequence, so it cannot show
    the moves themselves; the subscriber page shows each one)."""
    if cap_hours <= 0:
        return None
    return (
        f"Frequency cap: for someone also in another sequence, an email due less than {cap_hours:g} h after "
        "that sequence's last email to them moves later (never skipped); their subscriber page says why."
    )
