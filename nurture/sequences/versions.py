"""Sequence versions: drafts, the plan for enrollments in flight, publishing, archiving.

A version is an immutable snapshot of a definition. Enrollments are pinned to the version they joined until
a publish moves them. Publishing a new version offers two choices for the enrollments in flight:

* ``stay`` (the default): each keeps its version and its timetable; only new enrollments use the new one.
* ``move``: each continues at the step key it was waiting for (its *next key*), in the new version: that step
  and every later step of the new version it has not received yet are re-timed with the new delays from the
  last email it was sent (or from when it enrolled), fitted to the new window, at least :data:`MIN_GAP`
  apart, never before now; emails that would be due already are spread by the resume rate limit. An
  enrollment whose next key was removed *stops*: it ends and its open emails are cancelled. Nothing already
  sent is sent again (keys are compared, so a renamed step counts as removed + added).

:func:`compute_plan` decides, per enrollment, what a publish will do; ``nurture sequences plan``, the staff
UI, the API and :func:`publish_version` all call it, so what staff read is what then happens. Publishing
runs in one transaction that holds the sequence row and the open delivery rows of the sequence locked
(``FOR UPDATE``; the dispatcher's claim skips locked rows), so no dispatcher can claim a half-migrated
enrollment. Rows a worker holds (``queued``/``sending``) are left alone: they are the worker's, go out with
the old version's template, and count as that step being sent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
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
    events,
)
from nurture.sequences import control, timetable
from nurture.sequences.control import MIN_GAP, ControlError, SlotLimiter
from nurture.sequences.loader import SequenceDefinition
from nurture.sequences.review import Review
from nurture.sequences.schedule import SendWindow, format_delay
from nurture.sequences.timetable import window_of
from nurture.staff import accounts

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


class VersionError(ControlError):
    """A version action that does not apply now; ``code`` is stable for API clients."""


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


# --- drafts ---------------------------------------------------------------------------------------------


def pending_draft(session: Session, sequence: Sequence) -> SequenceVersion | None:
    """The unpublished version waiting for review, if any (at most one is kept)."""
    return session.scalar(
        select(SequenceVersion)
        .where(SequenceVersion.sequence_id == sequence.id, SequenceVersion.published_at.is_(None))
        .order_by(SequenceVersion.number.desc())
        .limit(1)
    )


def discard_draft(session: Session, draft: SequenceVersion) -> None:
    """Delete an unpublished version: nobody is enrolled in it and no delivery names its steps."""
    session.execute(delete(Step).where(Step.version_id == draft.id))
    session.execute(delete(SequenceVersion).where(SequenceVersion.id == draft.id))
    session.expire_all()


def store_version(
    session: Session,
    sequence: Sequence,
    definition: SequenceDefinition,
    *,
    origin: str,
    author: str | None,
    published: bool,
    now: datetime | None = None,
) -> SequenceVersion:
    """Write ``definition`` as the next version of ``sequence`` (published or a draft); not yet current."""
    number = (
        session.scalar(
            select(func.max(SequenceVersion.number)).where(SequenceVersion.sequence_id == sequence.id)
        )
        or 0
    ) + 1
    window = definition.window
    version = SequenceVersion(
        sequence_id=sequence.id,
        number=number,
        definition_hash=definition.digest(),
        definition=definition.canonical(),
        timezone=definition.timezone,
        window_days=",".join(str(d) for d in sorted(window.days)) if window else None,
        window_start=window.start.strftime("%H:%M") if window else None,
        window_end=window.end.strftime("%H:%M") if window else None,
        holidays=definition.holidays,
        origin=origin,
        author=author,
        published_at=(now or clock.now()) if published else None,
    )
    session.add(version)
    session.flush()
    session.add_all(
        Step(
            version_id=version.id,
            key=step.key,
            position=step.position,
            delay_seconds=int(step.delay.total_seconds()),
            template=step.template,
            subject=step.subject,
            use_window=step.use_window,
        )
        for step in definition.steps
    )
    session.flush()
    session.refresh(version)
    return version


def save_draft(
    session: Session, sequence: Sequence, definition: SequenceDefinition, *, origin: str, author: str | None
) -> SequenceVersion:
    """Store ``definition`` as the sequence's draft, replacing an earlier unpublished one."""
    digest = definition.digest()
    live = sequence.current_version
    if live is not None and live.definition_hash == digest:
        raise VersionError("unchanged", "nothing changed: this is the live version")
    existing = pending_draft(session, sequence)
    if existing is not None:
        if existing.definition_hash == digest:
            return existing
        discard_draft(session, existing)
    return store_version(session, sequence, definition, origin=origin, author=author, published=False)


def save_staff_draft(
    session: Session, sequence: Sequence, definition: SequenceDefinition, actor: accounts.Actor
) -> SequenceVersion:
    """A draft saved by staff (UI or API), audited in the same transaction. Origin "ui": a file sync will
    not overwrite it (docs/staff.md, Versions)."""
    before = {"draft": getattr(pending_draft(session, sequence), "number", None)}
    draft = save_draft(session, sequence, definition, origin="ui", author=actor.email)
    accounts.audit(
        session,
        actor,
        "sequence.draft",
        f"sequence:{sequence.slug}",
        before,
        {"draft": draft.number, "definition": draft.definition},
    )
    return draft


# --- publish and archive ----------------------------------------------------------------------------------


def lock(session: Session, slug: str) -> Sequence:
    try:
        return control.lock(session, slug)
    except ControlError as exc:
        raise VersionError(exc.code, exc.message) from None


def snapshot(sequence: Sequence) -> dict[str, Any]:
    version = sequence.current_version
    return {"status": sequence.status, "version": version.number if version else None}


def publish_version(
    session: Session,
    sequence: Sequence,
    version: SequenceVersion,
    choice: Migrate,
    *,
    per_minute: int,
    now: datetime | None = None,
) -> Plan:
    """Make ``version`` current and apply the plan to the enrollments in flight; the caller holds the
    sequence row locked (:func:`lock`) and owns the transaction."""
    now = now or clock.now()
    if sequence.status == SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is archived: restore it first")
    plan = compute_plan(
        session, sequence, shape_of_version(version), choice, per_minute=per_minute, now=now, lock=True
    )
    _apply(session, plan, version, now)
    version.published_at = version.published_at or now
    sequence.current_version_id = version.id
    if sequence.status == SequenceStatus.draft:
        sequence.status = SequenceStatus.active
    session.flush()
    session.refresh(sequence)
    events.record(
        session,
        "sequence-published",
        sequence=sequence.slug,
        version=version.number,
        migrate=choice.value,
        **plan.counts(),
    )
    return plan


def _apply(session: Session, plan: Plan, version: SequenceVersion, now: datetime) -> None:
    """Write the plan: a few batched statements, whatever the number of enrollments."""
    step_ids = {s.key: s.id for s in version.steps}
    table = Delivery.__table__
    moves: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    moved: list[int] = []
    stopped: list[int] = []
    cancels: dict[str, list[int]] = defaultdict(list)
    for entry in plan.enrollments:
        if entry.outcome is Outcome.stay:
            continue
        reused: set[int] = set()
        if entry.outcome is Outcome.move:
            for new in entry.new:
                existing = entry.open_ids.get(new.key)
                if existing is not None:
                    # The same key's waiting row now names the new version's step: one row per email.
                    moves.append(
                        {"row_id": existing, "new_step": step_ids[new.key], "new_due": new.due_at,
                         "new_status": new.status}
                    )  # fmt: skip
                    reused.add(existing)
                else:
                    inserts.append(
                        {"enrollment_id": entry.enrollment_id, "step_id": step_ids[new.key],
                         "subscriber_id": entry.subscriber_id, "due_at": new.due_at, "status": new.status}
                    )  # fmt: skip
            moved.append(entry.enrollment_id)
            reason = f"not-in-v{version.number}"
        else:
            stopped.append(entry.enrollment_id)
            reason = STOP_REASON
        cancels[reason].extend(i for i in entry.open_ids.values() if i not in reused)
    if moves and session.get_bind().dialect.name == "postgresql":
        _move_rows_postgresql(session, moves)
    elif moves:
        session.execute(
            update(table)
            # (an OR, not IN: an expanding IN cannot be part of an executemany)
            .where(table.c.id == bindparam("row_id"), or_(*(table.c.status == status for status in OPEN)))
            .values(
                step_id=bindparam("new_step"), due_at=bindparam("new_due"), status=bindparam("new_status")
            ),
            moves,
        )
    if inserts:
        session.execute(insert(table), inserts)
    for ids in _chunks(moved):
        session.execute(
            update(Enrollment)
            .where(Enrollment.id.in_(ids))
            .values(version_id=version.id)
            .execution_options(synchronize_session=False)
        )
    for ids in _chunks(stopped):
        session.execute(
            update(Enrollment)
            .where(Enrollment.id.in_(ids))
            .values(status=EnrollmentStatus.cancelled, ended_at=now, end_reason=STOP_REASON)
            .execution_options(synchronize_session=False)
        )
    for reason, row_ids in cancels.items():
        for ids in _chunks(row_ids):
            session.execute(
                update(table)
                .where(table.c.id.in_(ids), table.c.status.in_(OPEN))
                .values(status=DeliveryStatus.cancelled, skip_reason=reason)
            )
    session.flush()


def _move_rows_postgresql(session: Session, moves: list[dict[str, Any]]) -> None:
    """One ``UPDATE ... FROM unnest(arrays)``: four array parameters however many rows. A row-by-row
    executemany, or a compiled VALUES list, costs seconds per 10,000 rows while the publish holds locks."""
    session.execute(
        text(
            "UPDATE deliveries AS d SET step_id = m.step_id, due_at = m.due_at, status = m.status "
            "FROM unnest(CAST(:ids AS integer[]), CAST(:steps AS integer[]), CAST(:dues AS timestamptz[]), "
            "CAST(:statuses AS text[])) AS m(id, step_id, due_at, status) "
            "WHERE d.id = m.id AND d.status IN ('pending', 'held')"
        ),
        {
            "ids": [m["row_id"] for m in moves],
            "steps": [m["new_step"] for m in moves],
            "dues": [m["new_due"] for m in moves],
            "statuses": [str(m["new_status"]) for m in moves],
        },
    )


def _chunks(ids: list[int], size: int = 1000) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def archive(session: Session, sequence: Sequence, *, stop: bool, now: datetime | None = None) -> int:
    """No new enrollments; with ``stop`` the ones in flight end too. Returns the emails cancelled."""
    now = now or clock.now()
    if sequence.status == SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is already archived")
    if sequence.status == SequenceStatus.draft:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is a draft: nothing to archive")
    sequence.status = SequenceStatus.archived
    sequence.paused_at = None
    sequence.activate_at = None
    cancelled = 0
    if stop:
        live = select(Enrollment.id).where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_((EnrollmentStatus.active, EnrollmentStatus.paused)),
        )
        ids = list(session.scalars(live))
        if ids:
            cancelled = (
                session.execute(
                    update(Delivery)
                    .where(
                        Delivery.enrollment_id.in_(ids),
                        Delivery.status.in_((*OPEN, DeliveryStatus.queued)),
                    )
                    .values(
                        status=DeliveryStatus.cancelled, skip_reason="sequence-archived", lease_until=None
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                or 0
            )
            session.execute(
                update(Enrollment)
                .where(Enrollment.id.in_(ids))
                .values(status=EnrollmentStatus.cancelled, ended_at=now, end_reason="sequence-archived")
                .execution_options(synchronize_session=False)
            )
    session.flush()
    events.record(session, "sequence-archived", sequence=sequence.slug, stop=stop, cancelled=cancelled)
    return cancelled


def restore(session: Session, sequence: Sequence) -> None:
    if sequence.status != SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is not archived")
    sequence.status = SequenceStatus.active
    session.flush()


# --- one staff action, audited ----------------------------------------------------------------------------


def publish(
    session: Session,
    slug: str,
    choice: Migrate,
    *,
    actor: accounts.Actor | None,
    per_minute: int,
    now: datetime | None = None,
) -> tuple[Plan | None, str]:
    """Publish the pending draft of ``slug`` (or restore an archived sequence without one), audited.
    Returns the applied plan (None for a restore) and a one-line summary."""
    sequence = lock(session, slug)
    before = snapshot(sequence)
    draft = pending_draft(session, sequence)
    if draft is None:
        if sequence.status == SequenceStatus.archived:
            restore(session, sequence)
            accounts.audit(session, actor, "sequence.restore", f"sequence:{slug}", before, snapshot(sequence))
            return None, f"{slug}: restored from the archive (version {before['version']})"
        raise VersionError("no_draft", f"sequence {slug!r} has no draft version to publish")
    plan = publish_version(session, sequence, draft, choice, per_minute=per_minute, now=now)
    after = {**snapshot(sequence), "migrate": choice.value, **plan.counts()}
    accounts.audit(session, actor, "sequence.publish", f"sequence:{slug}", before, after)
    return plan, summary(plan)


def summary(plan: Plan) -> str:
    counts = plan.counts()
    return (
        f"{plan.slug}: version {plan.new.number} published ({plan.choice.value}): {counts['move']} moved, "
        f"{counts['stop']} stopped, {counts['stay']} stayed"
    )


def archive_action(
    session: Session, slug: str, *, stop: bool, actor: accounts.Actor | None, now: datetime | None = None
) -> int:
    sequence = lock(session, slug)
    before = snapshot(sequence)
    cancelled = archive(session, sequence, stop=stop, now=now)
    after = {**snapshot(sequence), "stop": stop, "cancelled": cancelled}
    accounts.audit(session, actor, "sequence.archive", f"sequence:{slug}", before, after)
    return cancelled


def plan_for_draft(
    session: Session, sequence: Sequence, choice: Migrate, *, per_minute: int
) -> tuple[SequenceVersion, Plan]:
    draft = pending_draft(session, sequence)
    if draft is None:
        raise VersionError("no_draft", f"sequence {sequence.slug!r} has no draft version")
    return draft, compute_plan(session, sequence, shape_of_version(draft), choice, per_minute=per_minute)


def describe_plan(plan: Plan, draft_of: str | None = None) -> list[str]:
    """The plan as lines of text, for the CLI."""
    live = f"v{plan.live_number}" if plan.live_number else "none"
    new = f"v{plan.new.number}" if plan.new.number else (draft_of or "the file on disk")
    lines = [f"{plan.slug}: live {live} → {new}; {len(plan.enrollments)} enrollments in flight"]
    if plan.diff is not None:
        d = plan.diff
        if d.empty:
            lines.append("  no changes")
        if d.removed:
            lines.append(f"  removed steps: {', '.join(d.removed)}")
        if d.added:
            lines.append(f"  added steps: {', '.join(d.added)}")
        for key, notes in d.changed.items():
            lines.append(f"  changed {key}: {'; '.join(notes)}")
        for note in d.settings:
            lines.append(f"  changed {note}")
    lines.append("  by step key (enrollments waiting for it; under stay | under move):")
    for row in plan.by_key():
        extra = f", {row['sending_now']} with an email being sent now" if row["sending_now"] else ""
        lines.append(f"    {row['key']}: {row['waiting']} waiting{extra}; stay: unchanged | {row['move']}")
    counts = plan.counts()
    lines.append(
        f"  under move: {counts['move']} move, {counts['stop']} stop; under stay: all "
        f"{len(plan.enrollments)} stay. Emails being sent right now are left alone."
    )
    return lines


# --- files ----------------------------------------------------------------------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def as_file_data(version: SequenceVersion) -> dict[str, Any]:
    """A stored version as the mapping a sequence file holds (the loader reads it back to the same digest)."""
    data = dict(version.definition)
    window = data.get("window")
    if window:
        data["window"] = {
            "days": ",".join(_DAY_NAMES[d] for d in window["days"]),
            "start": window["start"],
            "end": window["end"],
        }
    data["steps"] = [dict(step) for step in data.get("steps", [])]
    return data


def to_yaml(version: SequenceVersion) -> str:
    import yaml

    header = (
        f"# version {version.number} of {version.definition.get('slug')}, "
        f"from {'the staff UI' if version.origin == 'ui' else 'a file'}"
        f"{' by ' + version.author if version.author else ''}\n"
    )
    return header + yaml.safe_dump(as_file_data(version), sort_keys=False, allow_unicode=True, width=110)
