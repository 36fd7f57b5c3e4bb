"""Figures over time for the staff dashboard and a sequence's results: per day (and per step), counted by the
database over indexed columns, never by loading rows into Python.

Days are local days in ``NURTURE_REPORT_TIMEZONE``. The database groups by UTC hour (the one bucketing both
SQLite and PostgreSQL do the same way) and the hours are folded into local days here, so a day is exact in
every zone whose offset is whole hours and off by at most the odd half hour elsewhere.

What counts as what:

* **sent**: ``sent`` events (one per email accepted by the mail server, or marked sent by staff);
* **unsubscribed**: ``unsubscribed`` events (every way out: the link, one-click, preferences, staff);
* **bounced**: ``bounced`` events (a 5xx at sending, or a hard-bounce notification proved ours);
* **complaints**: ``complained`` events. nurture has no feedback-loop input yet, so these stay zero until
  one records them; mailbox providers report complaint rates in their own tools (docs/staff.md);
* per sequence, **clicked** counts tracked-link clicks, **goals** goal completions (each for the last email
  sent before it), and **unsubscribed** the enrollments that ended by unsubscribing, by the last step sent.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, literal_column, select
from sqlalchemy.orm import Session

from nurture.core import clock
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

SERIES = ("sent", "clicked", "unsubscribed", "goals")
WINDOW_DAYS = (7, 30, 90)  # the periods staff may choose on the results page


def _hour(session: Session, column: Any) -> Any:
    """``column`` truncated to its UTC hour, in the dialect's way (text on SQLite, a timestamp elsewhere)."""
    # Literal arguments, not bound ones: PostgreSQL accepts GROUP BY date_trunc(...) only when it is the very
    # expression selected, and two bound parameters would make it two different expressions.
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime(literal_column("'%Y-%m-%d %H:00:00'"), column)
    return func.date_trunc(literal_column("'hour'"), column)


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def period(days: int, tz: ZoneInfo, now: datetime | None = None) -> tuple[list[date], datetime]:
    """The last ``days`` local days up to today, and the UTC instant the first of them starts."""
    today = (now or clock.now()).astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=tz).astimezone(UTC)
    return days_between(first, today), start


def _fold(rows: Iterable[tuple[Any, ...]], tz: ZoneInfo) -> dict[tuple[Any, ...], int]:
    """(hour, *keys, count) rows -> {(local date, *keys): count}."""
    folded: dict[tuple[Any, ...], int] = defaultdict(int)
    for hour, *keys, count in rows:
        folded[(_as_utc(hour).astimezone(tz).date(), *keys)] += count
    return folded


def events_per_day(
    session: Session, kinds: Iterable[str], start: datetime, tz: ZoneInfo
) -> dict[str, dict[date, int]]:
    """kind -> local date -> count, for events since ``start`` (a grouped scan of ix_events_kind_created)."""
    hour = _hour(session, Event.created_at)
    rows = session.execute(
        select(hour, Event.kind, func.count())
        .where(Event.kind.in_(list(kinds)), Event.created_at >= start)
        .group_by(hour, Event.kind)
    )
    result: dict[str, dict[date, int]] = defaultdict(dict)
    for (day, kind), count in _fold(rows, tz).items():
        result[kind][day] = count
    return result


@dataclass
class Rate:
    """A count over the last 7 days as a share of emails sent, with the 7 days before for the trend."""

    count: int
    sent: int
    previous_count: int
    previous_sent: int

    @property
    def value(self) -> float | None:
        return self.count / self.sent if self.sent else None

    @property
    def previous(self) -> float | None:
        return self.previous_count / self.previous_sent if self.previous_sent else None

    @property
    def trend(self) -> str:
        """ "up", "down", "flat", or "" when there is nothing to compare."""
        if self.value is None or self.previous is None:
            return ""
        if abs(self.value - self.previous) < 1e-9:
            return "flat"
        return "up" if self.value > self.previous else "down"


@dataclass
class Overview:
    days: list[date]
    sent_per_day: list[int]
    active_enrollments: int
    goals_7d: int
    goals_previous_7d: int
    sent_7d: int
    unsubscribes: Rate
    bounces: Rate
    complaints: Rate
    complaints_ever: int
    held_unknown: int  # deliveries held with an unknown outcome, waiting for a person
    paused_sequences: list[str] = field(default_factory=list)


def _sum(per_day: dict[date, int], days: Iterable[date]) -> int:
    return sum(per_day.get(day, 0) for day in days)


def overview(session: Session, tz: ZoneInfo, days: int = 30, now: datetime | None = None) -> Overview:
    """What the dashboard shows: sends per day over ``days`` and the 7-day rates with their trend."""
    span = max(days, 14)
    all_days, start = period(span, tz, now)
    counts = events_per_day(session, ("sent", "unsubscribed", "bounced", "complained"), start, tz)
    last7, before7 = all_days[-7:], all_days[-14:-7]
    sent = counts.get("sent", {})

    def rate(kind: str) -> Rate:
        per_day = counts.get(kind, {})
        return Rate(_sum(per_day, last7), _sum(sent, last7), _sum(per_day, before7), _sum(sent, before7))

    goal_hour = _hour(session, GoalCompletion.created_at)
    goals = _fold(
        session.execute(
            select(goal_hour, func.count()).where(GoalCompletion.created_at >= start).group_by(goal_hour)
        ),
        tz,
    )
    goals_by_day = {key[0]: value for key, value in goals.items()}
    shown = all_days[-days:]
    return Overview(
        days=shown,
        sent_per_day=[sent.get(day, 0) for day in shown],
        active_enrollments=session.scalar(
            select(func.count())
            .select_from(Enrollment)
            .where(Enrollment.status.in_([EnrollmentStatus.active, EnrollmentStatus.paused]))
        )
        or 0,
        goals_7d=_sum(goals_by_day, last7),
        goals_previous_7d=_sum(goals_by_day, before7),
        sent_7d=_sum(sent, last7),
        unsubscribes=rate("unsubscribed"),
        bounces=rate("bounced"),
        complaints=rate("complained"),
        complaints_ever=session.scalar(select(func.count()).where(Event.kind == "complained")) or 0,
        held_unknown=session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.ambiguous)
        )
        or 0,
        paused_sequences=list(
            session.scalars(select(Sequence.slug).where(Sequence.status == "paused").order_by(Sequence.slug))
        ),
    )


# --- one sequence over time -----------------------------------------------------------------------------


@dataclass
class SequenceSeries:
    """A sequence's figures per local day and step key, over ``days``."""

    days: list[date]
    steps: list[str]  # keys in the current version's order, then keys only older versions have
    cells: dict[tuple[date, str, str], int]  # (day, step key, series) -> count

    def per_day(self, series: str) -> list[int]:
        return [sum(self.cells.get((day, key, series), 0) for key in self.steps) for day in self.days]

    def per_step(self, series: str) -> list[int]:
        return [sum(self.cells.get((day, key, series), 0) for day in self.days) for key in self.steps]

    def total(self, series: str) -> int:
        return sum(self.per_day(series))

    def csv(self) -> str:
        """One row per day and step (``date,step,sent,clicked,unsubscribed,goals``), days ascending."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(["date", "step", *SERIES])
        for day in self.days:
            for key in self.steps:
                writer.writerow(
                    [day.isoformat(), key, *(self.cells.get((day, key, series), 0) for series in SERIES)]
                )
        return buffer.getvalue()


def _keys(
    session: Session, sequence: Sequence
) -> tuple[list[str], dict[int, str], dict[tuple[int, int], str]]:
    """Step keys in order; step id -> key; (version id, position) -> key, over every version."""
    order = [s.key for s in sequence.current_version.steps] if sequence.current_version else []
    by_id: dict[int, str] = {}
    by_position: dict[tuple[int, int], str] = {}
    for step_id, key, version_id, position in session.execute(
        select(Step.id, Step.key, Step.version_id, Step.position)
        .join(SequenceVersion, SequenceVersion.id == Step.version_id)
        .where(SequenceVersion.sequence_id == sequence.id)
        .order_by(Step.version_id, Step.position)
    ):
        by_id[step_id] = key
        by_position[(version_id, position)] = key
        if key not in order:
            order.append(key)
    return order, by_id, by_position


def sequence_series(
    session: Session, sequence: Sequence, tz: ZoneInfo, days: int = 30, now: datetime | None = None
) -> SequenceSeries:
    all_days, start = period(days, tz, now)
    order, by_id, by_position = _keys(session, sequence)
    step_ids = list(by_id)
    cells: dict[tuple[date, str, str], int] = defaultdict(int)

    def add(series: str, folded: dict[tuple[Any, ...], int], key_of: Any) -> None:
        for (day, *rest), count in folded.items():
            key = key_of(*rest)
            if key is not None:
                cells[(day, key, series)] += count

    sent_hour = _hour(session, Event.created_at)
    add(
        "sent",
        _fold(
            session.execute(
                select(sent_hour, Delivery.step_id, func.count())
                .select_from(Event)
                .join(Delivery, Delivery.id == Event.delivery_id)
                .where(Event.kind == "sent", Event.created_at >= start, Delivery.step_id.in_(step_ids))
                .group_by(sent_hour, Delivery.step_id)
            ),
            tz,
        ),
        by_id.get,
    )
    click_hour = _hour(session, LinkClick.created_at)
    add(
        "clicked",
        _fold(
            session.execute(
                select(click_hour, LinkClick.step_id, func.count())
                .where(
                    LinkClick.step_id.in_(step_ids), LinkClick.kind == "click", LinkClick.created_at >= start
                )
                .group_by(click_hour, LinkClick.step_id)
            ),
            tz,
        ),
        by_id.get,
    )
    goal_hour = _hour(session, GoalCompletion.created_at)
    add(
        "goals",
        _fold(
            session.execute(
                select(goal_hour, GoalCompletion.step_id, func.count())
                .where(GoalCompletion.sequence_id == sequence.id, GoalCompletion.created_at >= start)
                .group_by(goal_hour, GoalCompletion.step_id)
            ),
            tz,
        ),
        # A goal met before any email counts for no step; the per-step table says how many.
        lambda step_id: by_id.get(step_id) if step_id is not None else None,
    )
    # Unsubscribed: enrollments that ended so, by day and by the last step they were sent (stats.py's rule).
    last_sent = (
        select(
            Enrollment.ended_at.label("ended_at"),
            Enrollment.version_id.label("version_id"),
            func.max(Step.position).label("position"),
        )
        .select_from(Enrollment)
        .outerjoin(
            Delivery, (Delivery.enrollment_id == Enrollment.id) & (Delivery.status == DeliveryStatus.sent)
        )
        .outerjoin(Step, Step.id == Delivery.step_id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.end_reason == "unsubscribed",
            Enrollment.ended_at >= start,
        )
        .group_by(Enrollment.id, Enrollment.ended_at, Enrollment.version_id)
        .subquery()
    )
    ended_hour = _hour(session, last_sent.c.ended_at)
    add(
        "unsubscribed",
        _fold(
            session.execute(
                select(ended_hour, last_sent.c.version_id, last_sent.c.position, func.count()).group_by(
                    ended_hour, last_sent.c.version_id, last_sent.c.position
                )
            ),
            tz,
        ),
        lambda version_id, position: by_position.get((version_id, position)),
    )
    return SequenceSeries(days=all_days, steps=order, cells=dict(cells))
