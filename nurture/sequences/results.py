"""Results per sequence and step, counted by the database (GROUP BY over indexed columns), never by loading
delivery rows into Python.

Steps are reported by key, across every version of the sequence, in the current version's order (keys only
in older versions follow, in their own order).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Event,
    GoalCompletion,
    LinkClick,
    Sequence,
    SequenceVersion,
    Step,
)
from nurture.sequences.experiments import step_tests

WAITING = (DeliveryStatus.pending, DeliveryStatus.queued, DeliveryStatus.sending)
OPEN = (*WAITING, DeliveryStatus.held)


@dataclass
class StepStats:
    key: str
    position: int
    scheduled: int = 0  # waiting for their time (pending, queued, sending)
    held: int = 0  # waiting for the sequence to be resumed
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    cancelled: int = 0
    ambiguous: int = 0  # held now with an unknown outcome, waiting for a person
    # Sends whose outcome a crash or a broken connection left unknown, by resolution: resent, held, and the
    # held ones staff then resolved (mark-sent, send-again). nurture.delivery.unknown_outcomes.
    unknown: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unsubscribed_after: int = 0  # left after this was the last step they were sent
    current: int = 0  # live enrollments whose next email is this step
    clicks: int = 0  # tracked link clicks on this step's emails, every click counted
    clickers: int = 0  # distinct subscribers who clicked
    opens: int = 0  # pixel loads (opt-in; unreliable, see docs/goals.md)
    openers: int = 0
    goals: int = 0  # goal completions whose last email before the goal was this step
    conversion_rate: float | None = None  # goals / sent (None before anything was sent)
    # An A/B test on the step (nurture.sequences.experiments): figures per variant, the leader against the
    # others, and the winner once staff ended it. None on a step that never had variants.
    variants: list[dict[str, Any]] | None = None
    comparison: dict[str, Any] | None = None
    winner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SequenceStats:
    slug: str
    enrolled: int
    enrollments: dict[str, int]
    unsubscribed_before_first: int
    steps: list[StepStats]
    goals: int = 0  # every goal completion in the sequence
    goals_before_first: int = 0  # goals met before any email had been sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.slug,
            "enrolled": self.enrolled,
            "enrollments": self.enrollments,
            "unsubscribed_before_first": self.unsubscribed_before_first,
            "goals": self.goals,
            "goals_before_first": self.goals_before_first,
            "steps": [s.as_dict() for s in self.steps],
        }


def _step_keys(session: Session, sequence: Sequence) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """step id -> key, and (version id, position) -> key, for every version of the sequence."""
    by_id: dict[int, str] = {}
    by_position: dict[tuple[int, int], str] = {}
    rows = session.execute(
        select(Step.id, Step.key, Step.version_id, Step.position)
        .join(SequenceVersion, SequenceVersion.id == Step.version_id)
        .where(SequenceVersion.sequence_id == sequence.id)
    )
    for step_id, key, version_id, position in rows:
        by_id[step_id] = key
        by_position[(version_id, position)] = key
    return by_id, by_position


def sequence_stats(session: Session, sequence: Sequence) -> SequenceStats:
    by_id, by_position = _step_keys(session, sequence)
    order: list[tuple[str, int]] = []
    if sequence.current_version is not None:
        order = [(s.key, s.position) for s in sequence.current_version.steps]
    seen = {key for key, _ in order}
    for (_, position), key in sorted(by_position.items(), key=lambda item: item[0]):
        if key not in seen:
            order.append((key, position))
            seen.add(key)
    steps = {key: StepStats(key=key, position=position) for key, position in order}
    step_ids = list(by_id)

    # One grouped scan of ix_deliveries_step_status.
    counts = session.execute(
        select(Delivery.step_id, Delivery.status, Delivery.skip_reason, func.count())
        .where(Delivery.step_id.in_(step_ids))
        .group_by(Delivery.step_id, Delivery.status, Delivery.skip_reason)
    )
    for step_id, status, reason, count in counts:
        item = steps[by_id[step_id]]
        if status in WAITING:
            item.scheduled += count
        elif status == DeliveryStatus.skipped:
            item.skipped[reason or "unknown"] = item.skipped.get(reason or "unknown", 0) + count
        elif status in {"held", "sent", "failed", "cancelled", "ambiguous"}:
            setattr(item, status, getattr(item, status) + count)

    bounced = session.execute(
        select(Delivery.step_id, func.count())
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == "bounced", Delivery.step_id.in_(step_ids))
        .group_by(Delivery.step_id)
    )
    for step_id, count in bounced:
        steps[by_id[step_id]].bounced += count

    resolution = case(
        (Event.kind == "ambiguous", Event.detail["resolution"].as_string()),
        else_=Event.detail["action"].as_string(),
    )
    unknown = session.execute(
        select(Delivery.step_id, resolution, func.count())
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind.in_(["ambiguous", "ambiguous-resolved"]), Delivery.step_id.in_(step_ids))
        .group_by(Delivery.step_id, resolution)
    )
    for step_id, how, count in unknown:
        tally = steps[by_id[step_id]].unknown
        tally[how or "held"] = tally.get(how or "held", 0) + count

    # Unsubscribed after step N: the last step each unsubscribed enrollment was sent.
    last_sent = (
        select(
            Enrollment.id.label("enrollment_id"),
            Enrollment.version_id.label("version_id"),
            func.max(Step.position).label("position"),
        )
        .select_from(Enrollment)
        .outerjoin(
            Delivery,
            (Delivery.enrollment_id == Enrollment.id) & (Delivery.status == DeliveryStatus.sent),
        )
        .outerjoin(Step, Step.id == Delivery.step_id)
        .where(Enrollment.sequence_id == sequence.id, Enrollment.end_reason == "unsubscribed")
        .group_by(Enrollment.id, Enrollment.version_id)
        .subquery()
    )
    before_first = 0
    for version_id, position, count in session.execute(
        select(last_sent.c.version_id, last_sent.c.position, func.count()).group_by(
            last_sent.c.version_id, last_sent.c.position
        )
    ):
        key = by_position.get((version_id, position)) if position is not None else None
        if key is None:
            before_first += count
        else:
            steps[key].unsubscribed_after += count

    # Where live enrollments stand: their earliest open step.
    standing = (
        select(Delivery.enrollment_id, func.min(Step.position).label("position"), Enrollment.version_id)
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_([EnrollmentStatus.active, EnrollmentStatus.paused]),
            Delivery.status.in_(OPEN),
        )
        .group_by(Delivery.enrollment_id, Enrollment.version_id)
        .subquery()
    )
    for version_id, position, count in session.execute(
        select(standing.c.version_id, standing.c.position, func.count()).group_by(
            standing.c.version_id, standing.c.position
        )
    ):
        key = by_position.get((version_id, position))
        if key is not None:
            steps[key].current += count

    enrollments: dict[str, int] = defaultdict(int)
    for status, count in session.execute(
        select(Enrollment.status, func.count())
        .where(Enrollment.sequence_id == sequence.id)
        .group_by(Enrollment.status)
    ):
        enrollments[status] = count
    goals_total, goals_before_first = _tracking_and_goals(session, sequence, steps, by_id)
    for key, test in step_tests(session, sequence, by_id).items():
        if key in steps:
            figures = test.as_dict()
            steps[key].variants = figures["variants"]
            steps[key].comparison = figures["comparison"]
            steps[key].winner = figures["winner"]
    return SequenceStats(
        slug=sequence.slug,
        enrolled=sum(enrollments.values()),
        enrollments=dict(enrollments),
        unsubscribed_before_first=before_first,
        steps=list(steps.values()),
        goals=goals_total,
        goals_before_first=goals_before_first,
    )


def _tracking_and_goals(
    session: Session, sequence: Sequence, steps: dict[str, StepStats], by_id: dict[int, str]
) -> tuple[int, int]:
    """Fill clicks, opens, goals and conversion per step; returns (goals in all, goals before any email)."""
    # One grouped scan of ix_link_clicks_step_kind_subscriber.
    for step_id, kind, total, unique in session.execute(
        select(
            LinkClick.step_id,
            LinkClick.kind,
            func.count(),
            func.count(func.distinct(LinkClick.subscriber_id)),
        )
        .where(LinkClick.step_id.in_(list(by_id)))
        .group_by(LinkClick.step_id, LinkClick.kind)
    ):
        item = steps[by_id[step_id]]
        if kind == "click":
            item.clicks += total
            item.clickers += unique
        elif kind == "open":
            item.opens += total
            item.openers += unique
    # One grouped scan of ix_goal_completions_sequence_step: each goal counts for the last email before it.
    total_goals = before_first = 0
    for step_id, count in session.execute(
        select(GoalCompletion.step_id, func.count())
        .where(GoalCompletion.sequence_id == sequence.id)
        .group_by(GoalCompletion.step_id)
    ):
        total_goals += count
        if step_id is None or step_id not in by_id:
            before_first += count
        else:
            steps[by_id[step_id]].goals += count
    for item in steps.values():
        item.conversion_rate = round(item.goals / item.sent, 4) if item.sent else None
    return total_goals, before_first


def standing_counts(session: Session) -> dict[int, dict[int, int]]:
    """sequence id -> {step position: live enrollments whose next email is that step} (current versions).

    Enrollments pinned to an older version (nurture.sequences.versions) are counted at the current version's
    step with the same key, since positions differ between versions; a key the current version no longer has
    is not shown."""
    standing = (
        select(
            Enrollment.sequence_id.label("sequence_id"),
            Enrollment.version_id.label("version_id"),
            Delivery.enrollment_id,
            func.min(Step.position).label("position"),
        )
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .where(
            Enrollment.status.in_([EnrollmentStatus.active, EnrollmentStatus.paused]),
            Delivery.status.in_(OPEN),
        )
        .group_by(Enrollment.sequence_id, Enrollment.version_id, Delivery.enrollment_id)
        .subquery()
    )
    grouped = session.execute(
        select(standing.c.sequence_id, standing.c.version_id, standing.c.position, func.count()).group_by(
            standing.c.sequence_id, standing.c.version_id, standing.c.position
        )
    ).all()
    # (version, position) -> key, and (sequence, key) -> position in its current version: a few rows each.
    key_of = {
        (version_id, position): key
        for version_id, position, key in session.execute(
            select(Step.version_id, Step.position, Step.key).where(
                Step.version_id.in_({row[1] for row in grouped})
            )
        )
    }
    current_position = {
        (sequence_id, key): position
        for sequence_id, key, position in session.execute(
            select(Sequence.id, Step.key, Step.position).join(
                Step, Step.version_id == Sequence.current_version_id
            )
        )
    }
    result: dict[int, dict[int, int]] = defaultdict(dict)
    for sequence_id, version_id, position, count in grouped:
        at = current_position.get((sequence_id, key_of.get((version_id, position))))
        if at is not None:
            result[sequence_id][at] = result[sequence_id].get(at, 0) + count
    return result
