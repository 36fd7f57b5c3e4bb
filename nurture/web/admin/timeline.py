"""The sequence page's timeline as a picture a person reads: one cell per local day from the signup to the
last email, the days the send window is shut (weekday or public holiday) shaded, each email on its day.

It arranges the due times :mod:`nurture.sequences.timetable` computed; it computes none itself. Long quiet
stretches (more than ``QUIET_DAYS`` days with nothing sent) fold into one "N quiet days" cell, so a 60-day
course still fits a phone screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from nurture.sequences.holidays import HolidayCalendar
from nurture.sequences.schedule import SendWindow

QUIET_DAYS = 6


@dataclass
class Day:
    day: date
    closed: bool  # the send window does not open this day
    holiday: str | None
    signup: bool
    sends: list[tuple[str, datetime, str]] = field(default_factory=list)  # (step key, local time, note)
    quiet: int = 0  # > 0: a folded run of this many days with nothing sent


def day_strip(
    signup: datetime,
    sends: list[tuple[str, datetime, str]],
    window: SendWindow | None,
    calendar: HolidayCalendar | None,
) -> list[Day]:
    """``signup`` and ``sends`` in the subscriber's local time; the cells in order."""
    if not sends:
        return []
    first = signup.date()
    last = max(when.date() for _, when, _ in sends)
    by_day: dict[date, list[tuple[str, datetime, str]]] = {}
    for key, when, note in sends:
        by_day.setdefault(when.date(), []).append((key, when, note))
    cells: list[Day] = []
    day = first
    while day <= last:
        holiday = calendar.holiday(day) if calendar is not None else None
        closed = (window is not None and day.weekday() not in window.days) or holiday is not None
        cells.append(Day(day, closed, holiday, day == first, by_day.get(day, [])))
        day += timedelta(days=1)
    return _fold_quiet(cells)


def _fold_quiet(cells: list[Day]) -> list[Day]:
    folded: list[Day] = []
    run: list[Day] = []

    def flush() -> None:
        if len(run) > QUIET_DAYS:
            # Keep the first day after a send and the last before the next one, for orientation.
            folded.append(run[0])
            folded.append(Day(run[1].day, False, None, False, quiet=len(run) - 2))
            folded.append(run[-1])
        else:
            folded.extend(run)
        run.clear()

    for cell in cells:
        if cell.sends or cell.signup or cell.holiday:
            flush()
            folded.append(cell)
        else:
            run.append(cell)
    flush()
    return folded
