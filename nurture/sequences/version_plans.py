"""The plan for enrollments in flight when a sequence version is published: what each will do, decided once.

A version's *shape* (:class:`Shape`: its steps' keys, delays, templates, window, zone, holidays) comes
from the database (:func:`shape_of_version`) or from a file (:func:`shape_of_definition`); :func:`diff`
says what changed between two. :func:`compute_plan` decides per enrollment whether it stays on its
version, moves to the new one (re-timed from the step key it was waiting for) or stops (that key is gone);
``nurture sequences plan``, the staff UI, the API and :func:`nurture.sequences.versions.publish_version` all
call it, so what staff read is what then happens. nurture.sequences.versions applies a plan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
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
)
from nurture.sequences import timetable
from nurture.sequences.control import MIN_GAP, SlotLimiter
from nurture.sequences.loader import SequenceDefinition
from nurture.sequences.review import Review
from nurture.sequences.schedule import SendWindow, format_delay
from nurture.sequences.timetable import window_of

OPEN = (DeliveryStatus.pending, DeliveryStatus.held)  # waiting: what a move re-times or a stop cancels
BUSY = (DeliveryStatus.queued, DeliveryStatus.sending)  # a worker holds them: never touched here
STOP_REASON = "step-removed"


class Migrate(StrEnum):
    stay = "stay"
    move = "move"


class Outcome(StrEnum):
    stay = "stay"  # keeps its version and timetable
    move = "move"  # continues at the same key in the new version
    stop = "stop"  # its next key is gone: the enrollment ends, open emails cancelled


# --- shapes: what the plan needs to know of a version, from the database or from a file -----------------


@dataclass(frozen=True)
class StepShape:
    key: str
    position: int
    delay: timedelta
    template: str
    subject: str | None
    use_window: bool = True  # False: the step skips the send window (nurture.sequences.timetable)


@dataclass(frozen=True)
class Shape:
    number: int | None  # None: not stored yet (a YAML file on disk)
    timezone: str | None
    window: SendWindow | None
    steps: tuple[StepShape, ...]
    holidays: str | None = None  # the holiday calendar that closes the window (nurture.sequences.holidays)
    reviewed: str | None = None  # "by X on YYYY-MM-DD" when the file says who reviewed it

    def step(self, key: str) -> StepShape | None:
        return next((s for s in self.steps if s.key == key), None)


def shape_of_version(version: SequenceVersion) -> Shape:
    return Shape(
        version.number,
        version.timezone,
        window_of(version),
        tuple(
            StepShape(s.key, s.position, s.delay, s.template, s.subject, s.use_window) for s in version.steps
        ),
        holidays=version.holidays,
        reviewed=_reviewed(Review.of(version.definition)),
    )


def shape_of_definition(definition: SequenceDefinition, number: int | None = None) -> Shape:
    return Shape(
        number,
        definition.timezone,
        definition.window,
        tuple(
            StepShape(s.key, s.position, s.delay, s.template, s.subject, s.use_window)
            for s in definition.steps
        ),
        holidays=definition.holidays,
        reviewed=_reviewed(definition.review),
    )


def _reviewed(review: Review) -> str | None:
    return f"by {review.by} on {review.on.isoformat()}" if review.is_set and review.on else None


@dataclass(frozen=True)
class Diff:
    removed: list[str]
    added: list[str]
    changed: dict[str, list[str]]  # key -> what changed, in words
    settings: list[str]  # window and time zone changes

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.settings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "added": self.added,
            "changed": self.changed,
            "settings": self.settings,
        }


def _window_text(window: SendWindow | None) -> str:
    return window.describe() if window else "any time"


def diff(old: Shape, new: Shape) -> Diff:
    old_keys = {s.key for s in old.steps}
    new_keys = {s.key for s in new.steps}
    changed: dict[str, list[str]] = {}
    for step in new.steps:
        before = old.step(step.key)
        if before is None:
            continue
        notes = []
        if before.position != step.position:
            notes.append(f"position #{before.position} → #{step.position}")
        if before.delay != step.delay:
            notes.append(f"delay {format_delay(before.delay)} → {format_delay(step.delay)}")
        if before.template != step.template:
            notes.append(f"template {before.template} → {step.template}")
        if before.subject != step.subject:
            notes.append(f"subject {before.subject or '(template)'!r} → {step.subject or '(template)'!r}")
        if before.use_window != step.use_window:
            notes.append(
                "now skips the send window" if not step.use_window else "now follows the send window"
            )
        if notes:
            changed[step.key] = notes
    settings = []
    if old.window != new.window:
        settings.append(f"window {_window_text(old.window)} → {_window_text(new.window)}")
    if old.timezone != new.timezone:
        settings.append(f"time zone {old.timezone or 'UTC'} → {new.timezone or 'UTC'}")
    if old.holidays != new.holidays:
        settings.append(f"holidays {old.holidays or 'none'} → {new.holidays or 'none'}")
    if old.reviewed != new.reviewed:
        settings.append(f"reviewed {old.reviewed or '(not stated)'} → {new.reviewed or '(not stated)'}")
    return Diff(
        removed=[s.key for s in old.steps if s.key not in new_keys],
        added=[s.key for s in new.steps if s.key not in old_keys],
        changed=changed,
        settings=settings,
    )


# --- the plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    key: str
    due_at: datetime
    status: str


@dataclass
class EnrollmentPlan:
    enrollment_id: int
    subscriber_id: int
    version_number: int
    next_key: str
    outcome: Outcome
    open_ids: dict[str, int]  # key -> id of each waiting delivery (re-used on move, cancelled otherwise)
    busy: int  # deliveries a worker holds right now, left alone
    new: list[NewDelivery] = field(default_factory=list)


@dataclass
class Plan:
    slug: str
    live_number: int | None
    new: Shape
    choice: Migrate
    diff: Diff | None
    enrollments: list[EnrollmentPlan]
    key_order: list[str]  # keys as staff know them: the live version's order, then older versions' keys

    def counts(self) -> dict[str, int]:
        totals = {outcome.value: 0 for outcome in Outcome}
        for entry in self.enrollments:
            totals[entry.outcome.value] += 1
        return totals

    def by_key(self) -> list[dict[str, Any]]:
        """Per step key: how many enrollments wait for it and what each choice does to them."""
        waiting: dict[str, int] = defaultdict(int)
        busy: dict[str, int] = defaultdict(int)
        for entry in self.enrollments:
            waiting[entry.next_key] += 1
            busy[entry.next_key] += 1 if entry.busy else 0
        rows = []
        total = len(self.new.steps)
        new_label = f"v{self.new.number}" if self.new.number is not None else "the new version"
        for key in self.key_order:
            step = self.new.step(key)
            if step is not None:
                move = f"move: continue at {key} (step {step.position} of {total}) in {new_label}"
            else:
                move = "stop: this step was removed; the enrollment ends and its waiting emails are cancelled"
            rows.append(
                {
                    "key": key,
                    "waiting": waiting.get(key, 0),
                    "sending_now": busy.get(key, 0),
                    "in_new_version": step is not None,
                    "stay": "stay on their version; timetable unchanged",
                    "move": move,
                    "outcome": (Outcome.move if step else Outcome.stop).value
                    if self.choice is Migrate.move
                    else Outcome.stay.value,
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.slug,
            "live_version": self.live_number,
            "new_version": self.new.number,
            "choice": self.choice.value,
            "changes": self.diff.as_dict() if self.diff else None,
            "in_flight": len(self.enrollments),
            "outcomes": self.counts(),
            "by_key": self.by_key(),
            "sending_now_note": (
                "emails a worker is sending right now are left alone: they go out as the old version "
                "wrote them and count as sent"
            ),
        }


@dataclass
class _Row:
    delivery_id: int
    enrollment_id: int
    subscriber_id: int
    version_id: int
    status: str
    key: str
    position: int
    due_at: datetime
    sent_at: datetime | None
    enrolled_at: datetime
    subscriber_tz: str | None
    paused_until: datetime | None
    subscriber_country: str | None = (
        None  # their holiday calendar, when recorded (nurture.sequences.timetable)
    )


def _rows(session: Session, sequence: Sequence, lock: bool) -> list[_Row]:
    """Every delivery of the sequence's enrollments in flight, in enrollment and step order."""
    if lock:
        # Lock the open and busy rows themselves: a dispatcher's claim (FOR UPDATE SKIP LOCKED, or a
        # conditional UPDATE that waits and re-reads) cannot take one until this transaction ends.
        session.execute(
            select(Delivery.id)
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(
                Enrollment.sequence_id == sequence.id,
                Enrollment.status.in_((EnrollmentStatus.active, EnrollmentStatus.paused)),
                Delivery.status.in_((*OPEN, *BUSY)),
            )
            .with_for_update(of=Delivery)
        ).all()
    rows = []
    query = (
        select(
            Delivery.id,
            Delivery.enrollment_id,
            Delivery.subscriber_id,
            Delivery.status,
            Delivery.due_at,
            Delivery.sent_at,
            Step.key,
            Step.position,
            Enrollment.version_id,
            Enrollment.enrolled_at,
            Subscriber.timezone,
            Subscriber.paused_until,
            timetable.country_column().label("country"),
        )
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_((EnrollmentStatus.active, EnrollmentStatus.paused)),
        )
        .order_by(Delivery.enrollment_id, Step.position)
    )
    for row in session.execute(query):
        rows.append(
            _Row(
                delivery_id=row.id,
                enrollment_id=row.enrollment_id,
                subscriber_id=row.subscriber_id,
                version_id=row.version_id,
                status=row.status,
                key=row.key,
                position=row.position,
                due_at=row.due_at,
                sent_at=row.sent_at,
                enrolled_at=row.enrolled_at,
                subscriber_tz=row.timezone,
                paused_until=row.paused_until,
                subscriber_country=row.country,
            )
        )
    return rows


def compute_plan(
    session: Session,
    sequence: Sequence,
    new: Shape,
    choice: Migrate,
    *,
    per_minute: int,
    now: datetime | None = None,
    lock: bool = False,
) -> Plan:
    """What publishing ``new`` with ``choice`` does to each enrollment in flight (the one decision maker)."""
    now = now or clock.now()
    live = sequence.current_version
    version_numbers = {v.id: v.number for v in sequence.versions}
    by_enrollment: dict[int, list[_Row]] = defaultdict(list)
    for row in _rows(session, sequence, lock):
        by_enrollment[row.enrollment_id].append(row)
    limiter = SlotLimiter(per_minute)
    not_before = now
    if sequence.status == SequenceStatus.scheduled and sequence.activate_at and sequence.activate_at > now:
        not_before = sequence.activate_at  # a scheduled sequence sends nothing before activation
    hold_all = sequence.status == SequenceStatus.paused
    plans: list[EnrollmentPlan] = []
    # First come, first served for the rate limit: the enrollment waiting longest is placed first.
    candidates = []
    for enrollment_id, rows in by_enrollment.items():
        waiting = [r for r in rows if r.status in OPEN]
        if not waiting:
            continue  # nothing left to re-time: it finishes as it is under either choice
        candidates.append((waiting[0].due_at, enrollment_id, rows, waiting))
    candidates.sort(key=lambda item: (item[0], item[1]))
    for _due, enrollment_id, rows, waiting in candidates:
        first = waiting[0]
        entry = EnrollmentPlan(
            enrollment_id=enrollment_id,
            subscriber_id=first.subscriber_id,
            version_number=version_numbers.get(first.version_id, 0),
            next_key=first.key,
            outcome=Outcome.stay,
            open_ids={r.key: r.delivery_id for r in waiting},
            busy=sum(1 for r in rows if r.status in BUSY),
        )
        plans.append(entry)
        if choice is Migrate.stay:
            continue
        target = new.step(first.key)
        if target is None:
            entry.outcome = Outcome.stop
            continue
        entry.outcome = Outcome.move
        done = {r.key for r in rows if r.status not in OPEN}
        held = hold_all or first.status == DeliveryStatus.held
        status = DeliveryStatus.held if held else DeliveryStatus.pending
        entry.new = _retime(rows, new, target, done, status, now, not_before, limiter)
    key_order = [s.key for s in live.steps] if live is not None else []
    for entry in plans:
        if entry.next_key not in key_order:
            key_order.append(entry.next_key)
    return Plan(
        slug=sequence.slug,
        live_number=live.number if live is not None else None,
        new=new,
        choice=choice,
        diff=diff(shape_of_version(live), new) if live is not None else None,
        enrollments=plans,
        key_order=key_order,
    )


def _retime(
    rows: list[_Row],
    new: Shape,
    target: StepShape,
    done: set[str],
    status: str,
    now: datetime,
    not_before: datetime,
    limiter: SlotLimiter,
) -> list[NewDelivery]:
    """Due times of the new version's steps from ``target`` on, for one enrollment."""
    # The subscriber's zone and country, else the new version's.
    table = timetable.Rules.of_definition(new).for_subscriber(
        rows[0].subscriber_tz, rows[0].subscriber_country
    )
    # The last email that went (or is going) out: the new delays count from it.
    last: datetime | None = None
    for row in rows:
        moment = row.sent_at if row.status == DeliveryStatus.sent else None
        if row.status in (*BUSY, DeliveryStatus.ambiguous):
            moment = row.due_at
        if moment is not None and (last is None or moment > last):
            last = moment
    floor = not_before
    paused_until = rows[0].paused_until
    if paused_until is not None and paused_until > floor:
        floor = paused_until  # the subscriber postponed their emails from the preferences page
    result: list[NewDelivery] = []
    previous = last if last is not None else rows[0].enrolled_at
    for step in new.steps[target.position - 1 :]:
        if step.key in done:
            continue  # never send a step twice
        wanted = table.after(previous, step.delay)
        if last is not None or result:
            wanted = max(wanted, previous + MIN_GAP)  # never two at once
        # Due already (a shorter delay, or a long wait): spread like a resume, not released as a flood.
        if wanted <= floor:
            due = limiter.place(floor, table, use_window=step.use_window)
        else:
            due = table.fit(wanted, use_window=step.use_window)
        result.append(NewDelivery(step.key, due, status))
        previous = due
    return result
