"""When is each step of a nurture sequence due?

Pure functions, no I/O. Every datetime this module returns is timezone-aware in UTC, so callers can store
and compare them without caring about zones; local wall time only matters *inside* these functions, where
we decide "09:00 on a weekday for this subscriber".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from nurture.core import clock

__all__ = [
    "ScheduleError",
    "SendWindow",
    "add_delay",
    "format_delay",
    "localize",
    "next_open",
    "parse_delay",
    "resolve_zone",
    "zone",
]


class ScheduleError(ValueError):
    """A delay, window, zone or datetime that cannot be scheduled; the message says what is wrong."""


# --------------------------------------------------------------------------------------------------- delays

_DELAY_UNITS: dict[str, timedelta] = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# Largest first, so format_delay picks the coarsest unit that still divides exactly.
_FORMAT_UNITS: list[tuple[str, timedelta]] = sorted(
    _DELAY_UNITS.items(), key=lambda item: item[1], reverse=True
)
_DELAY_RE = re.compile(r"(\d+)([a-z]?)")
_DELAY_HINT = "use 0, 30s, 15m, 6h or 2d"
_ONE_DAY = timedelta(days=1)


def _bad_delay(text: object, why: str = _DELAY_HINT) -> ScheduleError:
    return ScheduleError(f"bad delay '{text}': {why}")


def parse_delay(text: str | int) -> timedelta:
    """Parse "0", "30s", "15m", "6h", "2d" or "1w" (or the int 0) into a timedelta."""
    # bool is an int subclass; True meaning "1 of something" would be a silent surprise.
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise _bad_delay(text)
    if isinstance(text, int):
        if text < 0:
            raise _bad_delay(text, "delays cannot be negative")
        if text != 0:
            # A bare number has no unit, and guessing seconds vs days is how mail goes out a month early.
            raise _bad_delay(text)
        return timedelta(0)

    cleaned = text.strip().lower()
    if cleaned.startswith("-"):
        raise _bad_delay(text, "delays cannot be negative")
    match = _DELAY_RE.fullmatch(cleaned)
    if match is None:
        raise _bad_delay(text)
    amount, unit = int(match.group(1)), match.group(2)
    if not unit:
        if amount != 0:
            raise _bad_delay(text)
        return timedelta(0)
    if unit not in _DELAY_UNITS:
        raise _bad_delay(text)
    try:
        return amount * _DELAY_UNITS[unit]
    except OverflowError:
        raise _bad_delay(text, "too large") from None


def format_delay(delta: timedelta) -> str:
    """Inverse of parse_delay: the largest unit that divides exactly ("2d", "90m", "0")."""
    if delta < timedelta(0):
        raise ScheduleError(f"cannot format negative delay {delta}")
    if delta == timedelta(0):
        return "0"
    for suffix, unit in _FORMAT_UNITS:
        if delta % unit == timedelta(0):
            return f"{delta // unit}{suffix}"
    # Only sub-second remainders get here; parse_delay could not read them back, so refuse.
    raise ScheduleError(f"cannot format delay {delta}: not a whole number of seconds")


# ---------------------------------------------------------------------------------------------- send window

_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_LOOKUP: dict[str, int] = {
    **{name: index for index, name in enumerate(_DAY_NAMES)},
    **{name[:3]: index for index, name in enumerate(_DAY_NAMES)},
}
_DAY_ALIASES: dict[str, frozenset[int]] = {
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
    "daily": frozenset(range(7)),
    "everyday": frozenset(range(7)),
}
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})")


def _day_index(name: str) -> int:
    try:
        return _DAY_LOOKUP[name]
    except KeyError:
        raise ScheduleError(
            f"unknown day '{name}': use mon..sun, monday..sunday, weekdays, weekends or daily"
        ) from None


def _parse_day_token(token: str) -> frozenset[int]:
    """One comma-free piece: an alias, one day, or a range like "mon-fri" (ranges may wrap: "fri-mon")."""
    if token in _DAY_ALIASES:
        return _DAY_ALIASES[token]
    if "-" in token:
        first_name, _, last_name = token.partition("-")
        first, last = _day_index(first_name.strip()), _day_index(last_name.strip())
        span = (last - first) % 7
        return frozenset((first + offset) % 7 for offset in range(span + 1))
    return frozenset({_day_index(token)})


def _parse_days(days: str | list[str]) -> frozenset[int]:
    pieces = [days] if isinstance(days, str) else list(days)
    result: set[int] = set()
    for piece in pieces:
        if not isinstance(piece, str):
            raise ScheduleError(f"unknown day '{piece}': day names must be strings")
        for token in piece.split(","):
            token = token.strip().lower()
            # Skip blanks so a trailing comma is harmless; an all-blank spec is caught below.
            if token:
                result |= _parse_day_token(token)
    if not result:
        raise ScheduleError("send window has no days")
    return frozenset(result)


def _parse_time(text: str, label: str) -> time:
    match = _TIME_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ScheduleError(f"bad {label} time '{text}': use HH:MM, e.g. 09:00")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ScheduleError(f"bad {label} time '{text}': use HH:MM between 00:00 and 23:59")
    return time(hour, minute)


def _describe_days(days: frozenset[int]) -> str:
    if days == _DAY_ALIASES["daily"]:
        return "Daily"
    # Collapse consecutive days into runs so the common cases read "Mon-Fri" rather than five names.
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    labels = [_DAY_NAMES[run[0]][:3].title() for run in runs]
    for position, run in enumerate(runs):
        if len(run) > 1:
            labels[position] += "-" + _DAY_NAMES[run[-1]][:3].title()
    return ",".join(labels)


@dataclass(frozen=True)
class SendWindow:
    """Local wall-clock hours on given weekdays when mail may go out; start inclusive, end exclusive."""

    days: frozenset[int]  # 0=Monday .. 6=Sunday
    start: time
    end: time

    def __post_init__(self) -> None:
        # Accept any iterable of ints but store a frozenset, so windows stay hashable and comparable.
        object.__setattr__(self, "days", frozenset(self.days))
        # Validate direct construction too, so next_open can trust every window it is handed.
        if not self.days:
            raise ScheduleError("send window has no days")
        if not all(isinstance(day, int) and 0 <= day <= 6 for day in self.days):
            raise ScheduleError(f"send window days must be 0 (Monday) .. 6 (Sunday), got {sorted(self.days)}")
        if self.end <= self.start:
            raise ScheduleError(
                f"send window {self.start:%H:%M}-{self.end:%H:%M} never opens: end must be after start"
            )

    @classmethod
    def parse(cls, days: str | list[str], start: str, end: str) -> SendWindow:
        """Build a window from config text: days like "mon-fri" or ["mon", "wed"], times "HH:MM"."""
        return cls(days=_parse_days(days), start=_parse_time(start, "start"), end=_parse_time(end, "end"))

    def describe(self) -> str:
        """Human text such as "Mon-Fri 09:00-11:00"; SendWindow.parse reads the day part back."""
        return f"{_describe_days(self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


# -------------------------------------------------------------------------------------------------- zones


def zone(name: str | None) -> ZoneInfo:
    """Look up an IANA zone (nurture.core.clock.zone), as a ScheduleError for the schedule's callers."""
    try:
        return clock.zone(name)
    except clock.UnknownZone as exc:
        raise ScheduleError(str(exc)) from None


def resolve_zone(subscriber_tz: str | None, sequence_tz: str | None) -> ZoneInfo:
    """The subscriber's zone, else the sequence's, else UTC; bad names fall through, never fail a send."""
    for candidate in (subscriber_tz, sequence_tz):
        try:
            return zone(candidate)
        except ScheduleError:
            continue
    return ZoneInfo("UTC")


# ------------------------------------------------------------------------------------------ wall-time maths


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError("naive datetime")


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive local clock reading of an aware instant in tz."""
    return instant.astimezone(tz).replace(tzinfo=None)


def _offset(value: datetime) -> timedelta:
    # ZoneInfo always knows the offset; the fallback only satisfies the Optional in utcoffset's signature.
    return value.utcoffset() or timedelta(0)


def localize(naive: datetime, tz: ZoneInfo) -> datetime:
    """Read a naive local wall time in tz and return that instant in UTC.

    Repeated times (fall-back) resolve to the first occurrence; times skipped by a spring-forward gap move
    forward by the size of the gap (02:30 on a US DST day -> 03:30 local).
    """
    if naive.tzinfo is not None:
        raise ScheduleError("localize expects a naive local wall time, got an aware datetime")
    # fold=0 is the earlier of two readings of a repeated time, which is the one we want.
    first = naive.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if _wall(instant, tz) == naive:
        return instant
    # The round trip changed the clock reading, so this wall time never happens. The two folds straddle the
    # transition and their offsets differ by exactly the gap; shift the wall time past it and read it again.
    gap = abs(_offset(naive.replace(tzinfo=tz, fold=1)) - _offset(first))
    shifted = naive + gap
    moved = shifted.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(moved, tz) != shifted:
        raise ScheduleError(f"cannot place local time {naive:%Y-%m-%d %H:%M} in {tz.key}")
    return moved


def add_delay(previous: datetime, delay: timedelta, tz: ZoneInfo) -> datetime:
    """previous + delay, with whole-day delays counted as calendar days on the subscriber's local clock."""
    _require_aware(previous)
    if delay < timedelta(0):
        raise ScheduleError(f"bad delay '{delay}': delays cannot be negative")
    if delay > timedelta(0) and delay % _ONE_DAY == timedelta(0):
        # "2d" means "same clock time, two dates later" to a reader, even when DST makes that 47h or 49h.
        return localize(_wall(previous, tz) + delay, tz)
    # Convert first: aware arithmetic on a zoned datetime is wall-clock arithmetic; "6h" must be elapsed.
    return previous.astimezone(UTC) + delay


_LOOKAHEAD_DAYS = 14
_LOOKAHEAD_CLOSED_DAYS = 60
_ONE_SECOND = timedelta(seconds=1)


def _first_reading(naive: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the local clock reads `naive` or later.

    Same as localize() except inside a gap: localize() moves forward by the whole gap, but a window whose
    start is mid-gap is already open the moment the clock resumes (01:45-03:00 in London on the
    spring-forward day opens at 02:00 BST, not 02:45), and next_open must agree with its "inside" test.
    """
    moved = localize(naive, tz)
    gap = _wall(moved, tz) - naive
    if not gap:
        return moved
    # The clock resumed less than one gap before `moved`: before that it read < naive, after it read >= naive.
    # Bisect in whole seconds (zone transitions are whole seconds), keeping wall(low) < naive <= wall(high).
    low, high = moved - gap, moved
    while high - low > _ONE_SECOND:
        # At least one second per step, so a 1-2 second interval still shrinks.
        middle = low + max((high - low) // 2 // _ONE_SECOND, 1) * _ONE_SECOND
        if _wall(middle, tz) >= naive:
            high = middle
        else:
            low = middle
    return high


def _opening(day: date, window: SendWindow, tz: ZoneInfo, not_before: datetime) -> datetime | None:
    """When the window opens on `day` at or after `not_before`, or None if it does not open that day."""
    wall_start = datetime.combine(day, window.start)
    opens = _first_reading(wall_start, tz)
    if opens < not_before:
        # Only in a repeated hour: the first reading of the start time has passed but the clock will show it
        # again, so the second reading (fold=1) is the next time the window opens.
        opens = wall_start.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if opens < not_before:
            return None
    opened_at = _wall(opens, tz)
    # A start inside a DST gap opens when the clock resumes; if that is at/past the end there is no window.
    if opened_at.date() != day or opened_at.time() >= window.end:
        return None
    return opens


def next_open(
    at: datetime, window: SendWindow | None, tz: ZoneInfo, closed: Callable[[date], bool] | None = None
) -> datetime:
    """The earliest instant >= at that lies inside window on the local clock of tz (UTC).

    ``closed`` names extra local dates on which the window stays shut (public holidays): they are skipped like
    days outside ``window.days``. Without a window, a closed date is skipped from its local midnight.
    """
    _require_aware(at)
    at_utc = at.astimezone(UTC)
    if window is None:
        return at_utc if closed is None else _next_open_day(at_utc, tz, closed)
    local = _wall(at_utc, tz)
    today = local.date()
    # Holidays can close several open days in a row (Christmas to New Year), so look further ahead.
    lookahead = _LOOKAHEAD_DAYS if closed is None else _LOOKAHEAD_CLOSED_DAYS
    for offset in range(lookahead + 1):
        day = today + timedelta(days=offset)
        if day.weekday() not in window.days or (closed is not None and closed(day)):
            continue
        if offset == 0:
            if window.start <= local.time() < window.end:
                return at_utc
            if local.time() >= window.end:
                continue
        opens = _opening(day, window, tz, not_before=at_utc)
        if opens is not None:
            return opens
    raise ScheduleError(f"send window {window.describe()} does not open within {lookahead} days of {at_utc}")


def _next_open_day(at_utc: datetime, tz: ZoneInfo, closed: Callable[[date], bool]) -> datetime:
    """No window but closed dates: ``at`` itself on an open date, else the next open date's first instant."""
    today = _wall(at_utc, tz).date()
    for offset in range(_LOOKAHEAD_CLOSED_DAYS + 1):
        day = today + timedelta(days=offset)
        if closed(day):
            continue
        return at_utc if offset == 0 else _first_reading(datetime.combine(day, time(0)), tz)
    raise ScheduleError(f"every day within {_LOOKAHEAD_CLOSED_DAYS} days of {at_utc} is closed")
