"""Staff control of a whole sequence: pause, resume (two policies), schedule.

Pausing *holds*: the sequence is marked paused and, in the same transaction, every one of its ``pending``
deliveries becomes ``held``, so the dispatcher (which claims only ``pending`` rows) stops taking them; a row a
worker already claimed is held by the sender's own re-check. Nobody skips a step, because nothing is skipped:
held rows wait, in order, for resume.

Resume policies (docs/staff.md):

* ``shift``: each held email keeps its place in the subscriber's timetable, moved later by the length of the
  pause and fitted back into the send window.
* ``send_due``: emails whose time has not come keep their time; emails that fell due during the pause go out
  from now, oldest first, at most ``NURTURE_RESUME_RATE_PER_MINUTE`` per minute for the sequence and only
  inside the send window.

Under both, a subscriber's later steps are re-chained after their earlier ones (at least the step's delay and
never less than :data:`MIN_GAP` apart), so nobody gets two steps at once, and anything that would fall due at
the moment of resume is spread by the same rate limit rather than released as a flood.

Scheduling sets ``activate_at``: every open email of the sequence is re-timed to start at activation (an
enrollment that has not started gets its whole timetable computed from ``activate_at``), and enrollments
made before then start at activation too (``nurture.subscribers.enrollment.enroll``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    Subscriber,
    SubscriberStatus,
    events,
)
from nurture.sequences import timetable
from nurture.sequences.timetable import Timetable

# Two steps of one subscriber are never closer than this after a resume or a schedule change.
MIN_GAP = timedelta(minutes=1)
FINISHED = (DeliveryStatus.sent, DeliveryStatus.sending, DeliveryStatus.queued, DeliveryStatus.ambiguous)


class ResumePolicy(StrEnum):
    shift = "shift"
    send_due = "send_due"


class ControlError(ValueError):
    """A control action that does not apply now; ``code`` is stable for API clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ResumeResult:
    resumed: int  # held rows returned to pending
    rescheduled: int  # of those, rows whose due time changed
    cancelled: int  # held rows of enrollments that ended during the pause


def lock(session: Session, slug: str) -> Sequence:
    """The sequence row, locked for the rest of the transaction (one control action at a time)."""
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug).with_for_update())
    if sequence is None:
        raise ControlError("not_found", f"no sequence {slug!r}")
    return sequence


def effective_status(sequence: Sequence, now: datetime | None = None) -> str:
    """A scheduled sequence whose time has come is active even before anything flips its status."""
    if (
        sequence.status == SequenceStatus.scheduled
        and sequence.activate_at is not None
        and sequence.activate_at <= (now or clock.now())
    ):
        return SequenceStatus.active
    return sequence.status


def activate_due(session: Session, now: datetime | None = None) -> int:
    """Flip scheduled sequences whose time has come to active. Cosmetic for sending: their emails are
    already due no earlier than ``activate_at``; this only keeps the stored status honest."""
    result = session.execute(
        update(Sequence)
        .where(Sequence.status == SequenceStatus.scheduled, Sequence.activate_at <= (now or clock.now()))
        .values(status=SequenceStatus.active)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def snapshot(sequence: Sequence) -> dict[str, Any]:
    """The fields the audit log records before and after a control action."""
    return {
        "status": sequence.status,
        "paused_at": sequence.paused_at.isoformat() if sequence.paused_at else None,
        "activate_at": sequence.activate_at.isoformat() if sequence.activate_at else None,
    }


def _sequence_enrollments(sequence: Sequence) -> Any:
    return select(Enrollment.id).where(Enrollment.sequence_id == sequence.id).scalar_subquery()


# --- pause ------------------------------------------------------------------------------------------------


def pause(session: Session, sequence: Sequence, now: datetime | None = None) -> int:
    """Hold every pending email of the sequence; returns how many were held."""
    now = now or clock.now()
    if effective_status(sequence, now) == SequenceStatus.paused:
        raise ControlError("conflict", f"sequence {sequence.slug!r} is already paused")
    if sequence.status in (SequenceStatus.archived, SequenceStatus.draft):
        raise ControlError("conflict", f"sequence {sequence.slug!r} is {sequence.status}")
    sequence.status = SequenceStatus.paused
    sequence.paused_at = now
    sequence.activate_at = None
    session.flush()
    held = (
        session.execute(
            update(Delivery)
            .where(
                Delivery.status == DeliveryStatus.pending,
                Delivery.enrollment_id.in_(_sequence_enrollments(sequence)),
            )
            .values(status=DeliveryStatus.held)
            .execution_options(synchronize_session=False)
        ).rowcount
        or 0
    )
    events.record(session, "sequence-paused", sequence=sequence.slug, held=held)
    return held


# --- resume -----------------------------------------------------------------------------------------------


@dataclass
class _Row:
    id: int
    enrollment_id: int
    due_at: datetime
    position: int
    delay: timedelta
    table: Timetable  # the subscriber's window, zone and holidays
    use_window: bool  # False: the step skips the window (nurture.sequences.timetable)
    enrolled_at: datetime


class SlotLimiter:
    """Hands out send times at most ``per_minute`` per wall-clock minute, each fitted by its timetable.

    Full minutes point at the next minute (path-compressed), so placing n rows costs about n steps even when
    most minutes are already full.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.used: dict[int, int] = defaultdict(int)
        self.skip: dict[int, int] = {}

    def _free(self, minute: int) -> int:
        path = []
        while minute in self.skip:
            path.append(minute)
            minute = self.skip[minute]
        for visited in path:
            self.skip[visited] = minute
        return minute

    def place(self, earliest: datetime, table: Timetable, *, use_window: bool = True) -> datetime:
        at = table.fit(earliest, use_window=use_window)
        while True:
            minute = int(at.timestamp() // 60)
            free = self._free(minute)
            if free != minute:
                # Later than asked: that minute may be outside the window, so fit it again.
                at = table.fit(datetime.fromtimestamp(free * 60, UTC), use_window=use_window)
                if int(at.timestamp() // 60) != free:
                    continue
            self.used[free] += 1
            if self.used[free] >= self.per_minute:
                self.skip[free] = free + 1
            return at


def _held_rows(session: Session, sequence: Sequence) -> tuple[list[_Row], list[int]]:
    """Held rows of live enrollments (in enrollment, step order), and ids of held rows of ended ones."""
    rules: dict[int, timetable.Rules] = {}
    live: list[_Row] = []
    ended: list[int] = []
    query = (
        select(
            Delivery.id,
            Delivery.enrollment_id,
            Delivery.due_at,
            Step.position,
            Step.delay_seconds,
            Enrollment.version_id,
            Enrollment.status,
            Subscriber.timezone,
            Subscriber.status,
            Enrollment.enrolled_at,
            Step.use_window,
            timetable.country_column().label("country"),
        )
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Enrollment.sequence_id == sequence.id, Delivery.status == DeliveryStatus.held)
        .order_by(Delivery.enrollment_id, Step.position)
    )
    for row in session.execute(query):
        if row[6] != EnrollmentStatus.active or row[8] != SubscriberStatus.active:
            ended.append(row.id)
            continue
        version_rules = rules.get(row.version_id)
        if version_rules is None:
            version = session.get_one(SequenceVersion, row.version_id)
            version_rules = rules[row.version_id] = timetable.Rules.of_version(version)
        live.append(
            _Row(
                id=row.id,
                enrollment_id=row.enrollment_id,
                due_at=row.due_at,
                position=row.position,
                delay=timedelta(seconds=row.delay_seconds),
                table=version_rules.for_subscriber(row.timezone, row.country),
                use_window=row.use_window,
                enrolled_at=row.enrolled_at,
            )
        )
    return live, ended


def plan_resume(
    rows: list[_Row], policy: ResumePolicy, now: datetime, paused_at: datetime, per_minute: int
) -> dict[int, datetime]:
    """New due time per held row id. Pure: tested directly, applied by :func:`resume`."""
    limiter = SlotLimiter(per_minute)

    def wanted_for(row: _Row) -> datetime:
        if policy is ResumePolicy.send_due:
            return row.due_at
        # Someone who joined during the pause is shifted only by the part of it they waited through.
        return row.due_at + max(now - max(paused_at, row.enrolled_at), timedelta(0))

    new: dict[int, datetime] = {}
    by_enrollment: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_enrollment[row.enrollment_id].append(row)
    # Pass 1: each subscriber's first waiting step, oldest due first, so the rate limit is first come, first
    # served across subscribers.
    firsts = sorted((group[0] for group in by_enrollment.values()), key=lambda r: (r.due_at, r.id))
    for row in firsts:
        new[row.id] = _fit(wanted_for(row), row, now, limiter)
    # Pass 2: later steps follow their own earlier step by at least its delay.
    for group in by_enrollment.values():
        previous = new[group[0].id]
        for row in group[1:]:
            wanted = wanted_for(row)
            after_previous = max(row.table.after(previous, row.delay), previous + MIN_GAP)
            if wanted >= after_previous and wanted > now:
                new[row.id] = row.table.fit(wanted, use_window=row.use_window)
            else:
                new[row.id] = limiter.place(max(after_previous, now), row.table, use_window=row.use_window)
            previous = new[row.id]
    return new


def _fit(wanted: datetime, row: _Row, now: datetime, limiter: SlotLimiter) -> datetime:
    if wanted > now:
        return row.table.fit(wanted, use_window=row.use_window)
    # Due already: this is the would-be flood, spread by the rate limit.
    return limiter.place(now, row.table, use_window=row.use_window)


def resume(
    session: Session,
    sequence: Sequence,
    policy: ResumePolicy,
    *,
    per_minute: int,
    now: datetime | None = None,
) -> ResumeResult:
    now = now or clock.now()
    if sequence.status != SequenceStatus.paused:
        raise ControlError("conflict", f"sequence {sequence.slug!r} is not paused")
    rows, ended = _held_rows(session, sequence)
    new = plan_resume(rows, policy, now, sequence.paused_at or now, per_minute)
    sequence.status = SequenceStatus.active
    sequence.paused_at = None
    session.flush()
    _move(session, [(row.id, new[row.id]) for row in rows], DeliveryStatus.held)
    if ended:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ended), Delivery.status == DeliveryStatus.held)
            .values(status=DeliveryStatus.cancelled, skip_reason="enrollment-ended")
            .execution_options(synchronize_session=False)
        )
    changed = sum(1 for row in rows if new[row.id] != row.due_at)
    events.record(session, "sequence-resumed", sequence=sequence.slug, policy=policy.value, resumed=len(rows))
    return ResumeResult(resumed=len(rows), rescheduled=changed, cancelled=len(ended))


def _move(session: Session, moves: list[tuple[int, datetime]], from_status: str) -> None:
    """Set each row pending at its new time, only if it is still in ``from_status`` (one executemany)."""
    if not moves:
        return
    table = Delivery.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.status == from_status)
        .values(status=DeliveryStatus.pending, due_at=bindparam("new_due"))
    )
    session.execute(statement, [{"row_id": i, "new_due": due} for i, due in moves])


# --- schedule ---------------------------------------------------------------------------------------------


def schedule(session: Session, sequence: Sequence, activate_at: datetime, now: datetime | None = None) -> int:
    """Start the sequence at ``activate_at``; returns how many open emails were re-timed."""
    now = now or clock.now()
    if activate_at.tzinfo is None:
        raise ControlError("invalid", "activate_at needs a time zone offset (e.g. 2026-12-01T09:00:00Z)")
    if activate_at <= now:
        raise ControlError("invalid", "activate_at must be in the future; resume to start now")
    if sequence.status in (SequenceStatus.archived, SequenceStatus.draft):
        # A draft has no published version to start: publish it (nurture.sequences.versions) first.
        raise ControlError("conflict", f"sequence {sequence.slug!r} is {sequence.status}")
    sequence.status = SequenceStatus.scheduled
    sequence.activate_at = activate_at.astimezone(UTC)
    sequence.paused_at = None
    session.flush()
    rules: dict[int, timetable.Rules] = {}
    query = (
        select(
            Delivery.id,
            Delivery.enrollment_id,
            Delivery.status,
            Delivery.due_at,
            Step.delay_seconds,
            Enrollment.version_id,
            Subscriber.timezone,
            Step.use_window,
            timetable.country_column().label("country"),
        )
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Enrollment.sequence_id == sequence.id, Enrollment.status == EnrollmentStatus.active)
        .order_by(Delivery.enrollment_id, Step.position)
    )
    moves: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    started: set[int] = set()
    previous: dict[int, datetime] = {}
    for row in session.execute(query):
        if row.status in FINISHED or row.status == DeliveryStatus.failed:
            started.add(row.enrollment_id)
            continue
        if row.status not in (DeliveryStatus.pending, DeliveryStatus.held):
            continue
        version_rules = rules.get(row.version_id)
        if version_rules is None:
            version = session.get_one(SequenceVersion, row.version_id)
            version_rules = rules[row.version_id] = timetable.Rules.of_version(version)
        table = version_rules.for_subscriber(row.timezone, row.country)
        delay = timedelta(seconds=row.delay_seconds)
        if row.enrollment_id in previous:
            last = previous[row.enrollment_id]
            wanted = max(table.after(last, delay), last + MIN_GAP)
        elif row.enrollment_id in started:
            wanted = max(row.due_at, activate_at)  # in flight: the next email waits for activation
        else:
            wanted = table.after(activate_at, delay)  # not started: the whole timetable from activation
        due = table.fit(wanted, use_window=row.use_window)
        previous[row.enrollment_id] = due
        moves[row.status].append((row.id, due))
    for status, rows in moves.items():
        _move(session, rows, status)
    events.record(session, "sequence-scheduled", sequence=sequence.slug, activate_at=activate_at.isoformat())
    return sum(len(rows) for rows in moves.values())
