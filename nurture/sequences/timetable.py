"""The one timetable: when a sequence's steps are due for one subscriber, and why each time is what it is.

Everything that turns a sequence version (or a file's definition) into due times comes here: enrolling, the
importer, a subscriber's pause, resume or zone change, staff resume and schedule, publishing a version with
``move``, the sender's retry, and the timelines of the CLI and the admin UI. So the rules below hold in all
of them at once (DESIGN.md: one implementation per mechanism; a second copy drifts):

* Each step's delay counts from the previous step's *adjusted* time, on the subscriber's local clock
  (:func:`nurture.sequences.schedule.add_delay`: whole days are calendar days).
* The result is fitted into the send window (:func:`nurture.sequences.schedule.next_open`), except for a step
that
  opts out (``window: false`` in the file: a welcome goes right after confirming, at any hour or day).
* A sequence with ``holidays: US`` keeps its window shut on that calendar's public holidays, as if they were
  closed days of the window. The calendar is the subscriber's own country when we know it (a ``country``
  attribute, e.g. a CSV import column) and the sequence's otherwise.

:class:`Placement` keeps the reason with the time, so a timeline can say "moved past Christmas Day".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from nurture.sequences.holidays import HolidayCalendar, calendar_or_none
from nurture.sequences.schedule import ScheduleError, SendWindow, add_delay, next_open, resolve_zone

if TYPE_CHECKING:
    from nurture.models import Delivery, SequenceVersion

COUNTRY_ATTRIBUTE = "country"  # the subscriber attribute naming their holiday calendar ("US", "GB-SCT")


class Timing(Protocol):
    """What the timetable reads of a step: a stored Step, a file's StepDefinition, or a StepTiming."""

    @property
    def delay(self) -> timedelta: ...

    @property
    def use_window(self) -> bool: ...


@dataclass(frozen=True)
class StepTiming:
    delay: timedelta
    use_window: bool = True


@dataclass(frozen=True)
class Rules:
    """What a version says about timing: its window, its fallback zone and its holiday calendar."""

    window: SendWindow | None
    timezone: str | None = None
    holidays: str | None = None

    @classmethod
    def of_version(cls, version: SequenceVersion) -> Rules:
        window = None
        if version.window_days and version.window_start and version.window_end:
            window = SendWindow(
                days=frozenset(int(d) for d in version.window_days.split(",")),
                start=time.fromisoformat(version.window_start),
                end=time.fromisoformat(version.window_end),
            )
        return cls(window, version.timezone, version.holidays)

    @classmethod
    def of_definition(cls, definition: Any) -> Rules:
        """From anything carrying ``window``, ``timezone`` and ``holidays``: a file's SequenceDefinition, or
        nurture.sequences.version_plans.Shape."""
        return cls(definition.window, definition.timezone, definition.holidays)

    def for_subscriber(self, timezone: str | None, country: str | None = None) -> Timetable:
        """This version's timetable on one subscriber's clock (their zone, else the sequence's, else UTC)."""
        calendar = None
        if self.holidays:
            # Only a sequence that observes holidays has any; the subscriber's country then picks whose.
            calendar = calendar_or_none(country) or calendar_or_none(self.holidays)
        return Timetable(self.window, resolve_zone(timezone, self.timezone), calendar)


def country_of(attributes: Mapping[str, Any] | None) -> str | None:
    """The subscriber's holiday country from their attributes, when one was recorded."""
    value = (attributes or {}).get(COUNTRY_ATTRIBUTE)
    return value if isinstance(value, str) and value.strip() else None


def country_column() -> Any:
    """The subscriber's country attribute as a SQL expression, for queries that read columns, not rows."""
    from nurture.models import Subscriber

    return Subscriber.attributes[COUNTRY_ATTRIBUTE].as_string()


@dataclass(frozen=True)
class Placement:
    """One due time and how it came about."""

    due: datetime  # UTC, what is stored
    wanted: datetime  # UTC, the delay arithmetic before the window and holidays
    skips_window: bool = False  # the step opted out of the window (and so of holidays)
    holidays: tuple[tuple[date, str], ...] = ()  # local dates whose holiday pushed it later

    @property
    def moved(self) -> bool:
        return self.due != self.wanted

    def note(self) -> str:
        """Why the time is what it is, for a timeline; empty when nothing moved it."""
        if self.skips_window:
            return "sent at its due time: this step skips the send window"
        if self.holidays:
            days = ", ".join(f"{name} on {day:%a %Y-%m-%d}" for day, name in self.holidays)
            return f"moved past {days}"
        if self.moved:
            return "moved into the send window"
        return ""


@dataclass(frozen=True)
class Timetable:
    """One subscriber's timing rules: the window, their zone, and the holidays that close days."""

    window: SendWindow | None
    tz: ZoneInfo
    calendar: HolidayCalendar | None = None

    def after(self, previous: datetime, delay: timedelta) -> datetime:
        """``previous`` + ``delay`` on this subscriber's clock, before any fitting."""
        return add_delay(previous, delay, self.tz)

    def fit(self, at: datetime, *, use_window: bool = True) -> datetime:
        """The earliest instant >= ``at`` when this step may go out."""
        if not use_window:
            return next_open(at, None, self.tz)
        closed = self.calendar.closed if self.calendar is not None else None
        return next_open(at, self.window, self.tz, closed)

    def place(self, at: datetime, *, use_window: bool = True) -> Placement:
        """:meth:`fit`, with the reason (which holidays, if any, moved it)."""
        due = self.fit(at, use_window=use_window)
        wanted = next_open(at, None, self.tz)  # the same instant in UTC
        if not use_window:
            return Placement(due, wanted, skips_window=True)
        if self.calendar is None:
            return Placement(due, wanted)
        plain = next_open(at, self.window, self.tz)
        if plain == due:
            return Placement(due, wanted)
        # The window would have opened on `plain`'s date; every holiday from there up to the day it did open
        # is why it waited, except those on days the window is shut anyway (a holiday on a Saturday).
        day, last = plain.astimezone(self.tz).date(), due.astimezone(self.tz).date()
        found: list[tuple[date, str]] = []
        while day < last:
            name = self.calendar.holiday(day)
            if name is not None and (self.window is None or day.weekday() in self.window.days):
                found.append((day, name))
            day += timedelta(days=1)
        return Placement(due, wanted, holidays=tuple(found))

    def plan(self, anchor: datetime, steps: Iterable[Timing]) -> list[Placement]:
        """Each step's placement; each delay counts from the previous step's adjusted time."""
        if anchor.tzinfo is None or anchor.utcoffset() is None:
            raise ScheduleError("naive datetime")
        placements: list[Placement] = []
        previous = anchor
        for step in steps:
            # Chaining from the adjusted time keeps the spacing the author wrote: a Saturday signup with
            # delays [0, 1d] gets Monday then Tuesday, not two mails on Monday morning.
            placement = self.place(self.after(previous, step.delay), use_window=step.use_window)
            placements.append(placement)
            previous = placement.due
        return placements

    def due_times(self, anchor: datetime, steps: Iterable[Timing]) -> list[datetime]:
        return [placement.due for placement in self.plan(anchor, steps)]


def of_version(version: SequenceVersion, timezone: str | None, country: str | None = None) -> Timetable:
    """Shorthand: the version's timetable for a subscriber with this zone and country."""
    return Rules.of_version(version).for_subscriber(timezone, country)


def retry_time(delivery: Delivery, at: datetime) -> datetime:
    """When a delivery that failed temporarily may be tried again, no earlier than ``at``.

    A retry respects the send window and holidays like the first try (a 4xx at 11:29 must not land at 23:00
    local), and a step that skips the window is retried as soon as its backoff allows.
    """
    subscriber = delivery.subscriber
    table = of_version(delivery.enrollment.version, subscriber.timezone, country_of(subscriber.attributes))
    return table.fit(at, use_window=delivery.step.use_window)


def window_of(version: SequenceVersion) -> SendWindow | None:
    """The version's send window, for display (due times come from ``Rules``)."""
    return Rules.of_version(version).window
