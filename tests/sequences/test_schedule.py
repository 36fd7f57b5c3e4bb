"""Tests for nurture.sequences.schedule: delays, send windows, zones and DST-safe step scheduling.

Dates used (all 2026): US DST starts Sun 03-08 and ends Sun 11-01; UK starts Sun 03-29 and ends Sun 10-25;
Sydney starts Sun 10-04 and ends Sun 04-05. 2026-01-01 is a Thursday.
"""

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from nurture.sequences.schedule import (
    ScheduleError,
    SendWindow,
    add_delay,
    format_delay,
    localize,
    next_open,
    parse_delay,
    resolve_zone,
    zone,
)
from nurture.sequences.timetable import StepTiming, Timetable


def schedule_steps(
    anchor: datetime, delays: list[timedelta], send_window: SendWindow | None, tz: ZoneInfo
) -> list[datetime]:
    """The timetable's chaining for plain delays that all follow the window (no holidays)."""
    return Timetable(send_window, tz).due_times(anchor, [StepTiming(delay) for delay in delays])


NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
CHICAGO = ZoneInfo("America/Chicago")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # half-hour DST shift: gaps are not always one hour

# The six 2026 transition days above, per zone, for sweeping every local time around them.
TRANSITION_DAYS: dict[ZoneInfo, list[datetime]] = {
    NEW_YORK: [datetime(2026, 3, 8), datetime(2026, 11, 1)],
    CHICAGO: [datetime(2026, 3, 8), datetime(2026, 11, 1)],
    LONDON: [datetime(2026, 3, 29), datetime(2026, 10, 25)],
    SYDNEY: [datetime(2026, 10, 4), datetime(2026, 4, 5)],
    LORD_HOWE: [datetime(2026, 10, 4), datetime(2026, 4, 5)],
}
SWEEP_ZONES = list(TRANSITION_DAYS)
SWEEP_IDS = [tz.key for tz in SWEEP_ZONES]

DELAY_HINT = "use 0, 30s, 15m, 6h or 2d"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def window(days: str = "mon-fri", start: str = "09:00", end: str = "17:00") -> SendWindow:
    return SendWindow.parse(days, start, end)


# ------------------------------------------------------------------------------------------------ delays


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        (0, timedelta(0)),
        ("0m", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("90m", timedelta(minutes=90)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(days=7)),
        ("  2d\n", timedelta(days=2)),
        ("2D", timedelta(days=2)),
        ("007d", timedelta(days=7)),
    ],
)
def test_parse_delay_accepts(text: str | int, expected: timedelta) -> None:
    assert parse_delay(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3x", f"bad delay '3x': {DELAY_HINT}"),
        ("", f"bad delay '': {DELAY_HINT}"),
        ("   ", f"bad delay '   ': {DELAY_HINT}"),
        ("d", f"bad delay 'd': {DELAY_HINT}"),
        ("2", f"bad delay '2': {DELAY_HINT}"),
        (30, f"bad delay '30': {DELAY_HINT}"),
        ("1.5d", f"bad delay '1.5d': {DELAY_HINT}"),
        (1.5, f"bad delay '1.5': {DELAY_HINT}"),
        ("2 d", f"bad delay '2 d': {DELAY_HINT}"),
        ("2dd", f"bad delay '2dd': {DELAY_HINT}"),
        ("+2d", f"bad delay '+2d': {DELAY_HINT}"),
        ("2y", f"bad delay '2y': {DELAY_HINT}"),
        (True, f"bad delay 'True': {DELAY_HINT}"),
        (None, f"bad delay 'None': {DELAY_HINT}"),
        ("-1d", "bad delay '-1d': delays cannot be negative"),
        (-5, "bad delay '-5': delays cannot be negative"),
        ("99999999999w", "bad delay '99999999999w': too large"),
    ],
)
def test_parse_delay_rejects(text: object, message: str) -> None:
    with pytest.raises(ScheduleError) as excinfo:
        parse_delay(text)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_delay("nope")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0"),
        (timedelta(days=2), "2d"),
        (timedelta(minutes=90), "90m"),
        (timedelta(hours=36), "36h"),
        (timedelta(seconds=120), "2m"),
        (timedelta(seconds=61), "61s"),
        (timedelta(days=7), "1w"),
        (timedelta(days=14), "2w"),
        (timedelta(days=8), "8d"),
    ],
)
def test_format_delay_uses_largest_exact_unit_and_round_trips(delta: timedelta, text: str) -> None:
    assert format_delay(delta) == text
    assert parse_delay(text) == delta


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (timedelta(seconds=-1), "negative"),
        (timedelta(milliseconds=1500), "not a whole number of seconds"),
    ],
)
def test_format_delay_rejects(delta: timedelta, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        format_delay(delta)


# ------------------------------------------------------------------------------------------- send window

WEEKDAYS = frozenset({0, 1, 2, 3, 4})
EVERY_DAY = frozenset(range(7))


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon-fri", WEEKDAYS),
        ("MON-Fri", WEEKDAYS),
        ("monday-friday", WEEKDAYS),
        ("weekdays", WEEKDAYS),
        ("Weekends", frozenset({5, 6})),
        ("sat-sun", frozenset({5, 6})),
        ("daily", EVERY_DAY),
        ("everyday", EVERY_DAY),
        ("mon,wed,fri", frozenset({0, 2, 4})),
        (" mon , Wednesday ,fri, ", frozenset({0, 2, 4})),
        ("wed", frozenset({2})),
        (["mon", "tue"], frozenset({0, 1})),
        (["mon-wed", "Friday"], frozenset({0, 1, 2, 4})),
        (["weekends", "mon"], frozenset({0, 5, 6})),
        ("fri-mon", frozenset({4, 5, 6, 0})),
        ("mon-mon", frozenset({0})),
    ],
)
def test_send_window_parse_days(days: str | list[str], expected: frozenset[int]) -> None:
    parsed = SendWindow.parse(days, "09:00", "11:00")
    assert parsed == SendWindow(days=expected, start=time(9), end=time(11))


@pytest.mark.parametrize(
    ("start", "end", "expected_start", "expected_end"),
    [
        ("09:00", "17:00", time(9), time(17)),
        ("9:30", "10:05", time(9, 30), time(10, 5)),
        (" 00:00 ", "23:59", time(0), time(23, 59)),
    ],
)
def test_send_window_parse_times(start: str, end: str, expected_start: time, expected_end: time) -> None:
    parsed = SendWindow.parse("daily", start, end)
    assert (parsed.start, parsed.end) == (expected_start, expected_end)


@pytest.mark.parametrize(
    ("days", "start", "end", "message"),
    [
        ("funday", "09:00", "17:00", "unknown day 'funday'"),
        ("mon-funday", "09:00", "17:00", "unknown day 'funday'"),
        (["mon", "tues"], "09:00", "17:00", "unknown day 'tues'"),
        ("", "09:00", "17:00", "send window has no days"),
        (" , ", "09:00", "17:00", "send window has no days"),
        ([], "09:00", "17:00", "send window has no days"),
        ("mon-fri", "09:00", "09:00", "send window 09:00-09:00 never opens"),
        ("mon-fri", "17:00", "09:00", "send window 17:00-09:00 never opens"),
        ("mon-fri", "9am", "17:00", "bad start time '9am': use HH:MM"),
        ("mon-fri", "09:00", "1700", "bad end time '1700': use HH:MM"),
        ("mon-fri", "09:00", "24:00", "bad end time '24:00'"),
        ("mon-fri", "09:60", "17:00", "bad start time '09:60'"),
        ("mon-fri", "", "17:00", "bad start time ''"),
    ],
)
def test_send_window_parse_errors(days: str | list[str], start: str, end: str, message: str) -> None:
    with pytest.raises(ScheduleError) as excinfo:
        SendWindow.parse(days, start, end)
    assert str(excinfo.value).startswith(message)


def test_send_window_validates_direct_construction() -> None:
    with pytest.raises(ScheduleError, match=r"0 \(Monday\) \.\. 6 \(Sunday\)"):
        SendWindow(days=frozenset({7}), start=time(9), end=time(10))
    with pytest.raises(ScheduleError, match="no days"):
        SendWindow(days=frozenset(), start=time(9), end=time(10))
    with pytest.raises(ScheduleError, match="never opens"):
        SendWindow(days=WEEKDAYS, start=time(10), end=time(9))
    # A plain set is stored as a frozenset so the (frozen) window stays hashable.
    built = SendWindow(days={0, 1}, start=time(9), end=time(10))  # type: ignore[arg-type]
    assert built.days == frozenset({0, 1})
    assert hash(built) == hash(SendWindow(days=frozenset({0, 1}), start=time(9), end=time(10)))


@pytest.mark.parametrize(
    ("days", "text"),
    [
        ("mon-fri", "Mon-Fri 09:00-11:00"),
        ("daily", "Daily 09:00-11:00"),
        ("weekends", "Sat-Sun 09:00-11:00"),
        ("mon,wed,fri", "Mon,Wed,Fri 09:00-11:00"),
        ("mon,tue,thu", "Mon-Tue,Thu 09:00-11:00"),
        ("sun", "Sun 09:00-11:00"),
    ],
)
def test_send_window_describe_round_trips(days: str, text: str) -> None:
    parsed = SendWindow.parse(days, "09:00", "11:00")
    assert parsed.describe() == text
    day_part, _, hours = text.partition(" ")
    start, _, end = hours.partition("-")
    assert SendWindow.parse(day_part, start, end) == parsed


# ------------------------------------------------------------------------------------------------- zones


def test_zone_returns_zoneinfo() -> None:
    assert zone("America/New_York") == NEW_YORK
    assert zone(" Europe/London ") == LONDON


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Mars/Base", "unknown time zone 'Mars/Base'"),
        ("", "unknown time zone ''"),
        ("  ", "unknown time zone '  '"),
        ("America", "unknown time zone 'America'"),
        ("utc", "unknown time zone 'utc'"),
        ("../etc/passwd", "unknown time zone '../etc/passwd'"),
        ("/etc/localtime", "unknown time zone '/etc/localtime'"),
        (None, "unknown time zone None"),
    ],
)
def test_zone_rejects(name: str | None, message: str) -> None:
    with pytest.raises(ScheduleError) as excinfo:
        zone(name)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("subscriber", "sequence", "expected"),
    [
        ("America/New_York", "Europe/London", "America/New_York"),
        ("Mars/Base", "Europe/London", "Europe/London"),
        (None, "Europe/London", "Europe/London"),
        ("", "Europe/London", "Europe/London"),
        ("Mars/Base", "Venus/Base", "UTC"),
        (None, None, "UTC"),
        ("", "", "UTC"),
        ("../etc/passwd", None, "UTC"),
    ],
)
def test_resolve_zone_falls_back(subscriber: str | None, sequence: str | None, expected: str) -> None:
    assert resolve_zone(subscriber, sequence).key == expected


# ------------------------------------------------------------------------------------------------ localize


@pytest.mark.parametrize(
    ("tz", "naive", "expected_utc", "expected_wall"),
    [
        # Ordinary times.
        (NEW_YORK, datetime(2026, 1, 15, 9, 0), utc(2026, 1, 15, 14, 0), datetime(2026, 1, 15, 9, 0)),
        (NEW_YORK, datetime(2026, 7, 15, 9, 0), utc(2026, 7, 15, 13, 0), datetime(2026, 7, 15, 9, 0)),
        # Spring-forward gaps: move forward by the gap.
        (NEW_YORK, datetime(2026, 3, 8, 2, 30), utc(2026, 3, 8, 7, 30), datetime(2026, 3, 8, 3, 30)),
        (NEW_YORK, datetime(2026, 3, 8, 2, 0), utc(2026, 3, 8, 7, 0), datetime(2026, 3, 8, 3, 0)),
        (LONDON, datetime(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 30), datetime(2026, 3, 29, 2, 30)),
        (SYDNEY, datetime(2026, 10, 4, 2, 30), utc(2026, 10, 3, 16, 30), datetime(2026, 10, 4, 3, 30)),
        # Fall-back folds: first occurrence (summer time still in force).
        (NEW_YORK, datetime(2026, 11, 1, 1, 30), utc(2026, 11, 1, 5, 30), datetime(2026, 11, 1, 1, 30)),
        (LONDON, datetime(2026, 10, 25, 1, 30), utc(2026, 10, 25, 0, 30), datetime(2026, 10, 25, 1, 30)),
        (SYDNEY, datetime(2026, 4, 5, 2, 30), utc(2026, 4, 4, 15, 30), datetime(2026, 4, 5, 2, 30)),
    ],
    ids=[
        *["ny-winter", "ny-summer"],
        *["ny-gap", "ny-gap-start", "london-gap", "sydney-gap"],
        *["ny-fold", "london-fold", "sydney-fold"],
    ],
)
def test_localize(tz: ZoneInfo, naive: datetime, expected_utc: datetime, expected_wall: datetime) -> None:
    result = localize(naive, tz)
    assert result == expected_utc
    assert result.tzinfo is UTC
    assert wall(result, tz) == expected_wall


def test_localize_ignores_callers_fold() -> None:
    # fold=1 would pick the second 01:30 if passed through; the contract is always the first occurrence.
    assert localize(datetime(2026, 11, 1, 1, 30, fold=1), NEW_YORK) == utc(2026, 11, 1, 5, 30)


def test_localize_rejects_aware_input() -> None:
    with pytest.raises(ScheduleError, match="naive"):
        localize(utc(2026, 1, 1, 9, 0), NEW_YORK)


@pytest.mark.parametrize("tz", SWEEP_ZONES, ids=SWEEP_IDS)
def test_localize_sweep_around_transitions(tz: ZoneInfo) -> None:
    # Every 15 minutes from the day before to the day after each change: existing times come back unchanged,
    # skipped times move forward by at most the gap, and re-localizing the shown time is stable.
    for day in TRANSITION_DAYS[tz]:
        for step in range(3 * 24 * 4):
            naive = day - timedelta(days=1) + step * timedelta(minutes=15)
            result = localize(naive, tz)
            shown = wall(result, tz)
            assert naive <= shown <= naive + timedelta(hours=1), naive
            assert localize(shown, tz) == result, naive


# ----------------------------------------------------------------------------------------------- add_delay


@pytest.mark.parametrize(
    ("previous", "delay", "tz", "expected"),
    [
        # Saturday 09:00 EST + 2d = Monday 09:00 EDT: 47 hours of elapsed time.
        (datetime(2026, 3, 7, 9, 0, tzinfo=NEW_YORK), timedelta(days=2), NEW_YORK, utc(2026, 3, 9, 13, 0)),
        # Across fall-back: Saturday 09:00 EDT + 2d = Monday 09:00 EST, 49 hours.
        (datetime(2026, 10, 31, 9, 0, tzinfo=NEW_YORK), timedelta(days=2), NEW_YORK, utc(2026, 11, 2, 14, 0)),
        # Landing in the gap moves forward; landing in the fold takes the first occurrence.
        (datetime(2026, 3, 7, 2, 30, tzinfo=NEW_YORK), timedelta(days=1), NEW_YORK, utc(2026, 3, 8, 7, 30)),
        (
            datetime(2026, 10, 31, 1, 30, tzinfo=NEW_YORK),
            timedelta(days=1),
            NEW_YORK,
            utc(2026, 11, 1, 5, 30),
        ),
        # Calendar days follow the subscriber's clock whatever zone `previous` is expressed in.
        (utc(2026, 3, 28, 9, 0), timedelta(days=1), LONDON, utc(2026, 3, 29, 8, 0)),
        (utc(2026, 1, 10, 3, 0), timedelta(weeks=1), NEW_YORK, utc(2026, 1, 17, 3, 0)),
        # Not whole days: elapsed time, even across DST.
        (datetime(2026, 3, 7, 23, 0, tzinfo=NEW_YORK), timedelta(hours=6), NEW_YORK, utc(2026, 3, 8, 10, 0)),
        (datetime(2026, 3, 7, 9, 0, tzinfo=NEW_YORK), timedelta(hours=36), NEW_YORK, utc(2026, 3, 9, 2, 0)),
        (datetime(2026, 3, 7, 9, 0, tzinfo=NEW_YORK), timedelta(0), NEW_YORK, utc(2026, 3, 7, 14, 0)),
    ],
)
def test_add_delay(previous: datetime, delay: timedelta, tz: ZoneInfo, expected: datetime) -> None:
    result = add_delay(previous, delay, tz)
    assert result == expected
    assert result.tzinfo is UTC


def test_add_delay_six_hours_is_elapsed_not_wall_time() -> None:
    # 23:00 EST + 6h is 06:00 EDT the next morning, not 05:00: the clock jumped an hour in between.
    result = add_delay(datetime(2026, 3, 7, 23, 0, tzinfo=NEW_YORK), timedelta(hours=6), NEW_YORK)
    assert wall(result, NEW_YORK) == datetime(2026, 3, 8, 6, 0)


def test_add_delay_rejects_negative() -> None:
    with pytest.raises(ScheduleError, match="negative"):
        add_delay(utc(2026, 1, 1), timedelta(hours=-1), NEW_YORK)


# ----------------------------------------------------------------------------------------------- next_open


def test_next_open_without_window_converts_to_utc() -> None:
    at = datetime(2026, 1, 10, 3, 0, tzinfo=NEW_YORK)
    result = next_open(at, None, NEW_YORK)
    assert result == utc(2026, 1, 10, 8, 0)
    assert result.tzinfo is UTC


def test_next_open_inside_window_is_unchanged() -> None:
    at = datetime(2026, 1, 14, 10, 15, tzinfo=NEW_YORK)  # Wednesday
    result = next_open(at, window(), NEW_YORK)
    assert result == utc(2026, 1, 14, 15, 15)
    assert result.tzinfo is UTC


def test_next_open_at_exact_start_is_unchanged_and_at_end_is_next_day() -> None:
    mon_fri = window()
    assert next_open(datetime(2026, 1, 14, 9, 0, tzinfo=NEW_YORK), mon_fri, NEW_YORK) == utc(2026, 1, 14, 14)
    # End is exclusive: 17:00 Wednesday waits for Thursday 09:00.
    assert next_open(datetime(2026, 1, 14, 17, 0, tzinfo=NEW_YORK), mon_fri, NEW_YORK) == utc(2026, 1, 15, 14)


def test_next_open_before_start_same_day() -> None:
    at = datetime(2026, 1, 14, 7, 0, tzinfo=NEW_YORK)
    assert next_open(at, window(), NEW_YORK) == utc(2026, 1, 14, 14, 0)


def test_next_open_weekend_rollover() -> None:
    friday_evening = datetime(2026, 1, 9, 18, 0, tzinfo=NEW_YORK)
    assert next_open(friday_evening, window(), NEW_YORK) == utc(2026, 1, 12, 14, 0)  # Monday 09:00 EST


def test_next_open_rolls_over_several_days() -> None:
    thursday = datetime(2026, 1, 8, 10, 0, tzinfo=NEW_YORK)
    assert next_open(thursday, window("wed"), NEW_YORK) == utc(2026, 1, 14, 14, 0)  # next Wednesday 09:00


def test_next_open_uses_subscriber_local_day_not_utc_day() -> None:
    # 02:00Z Saturday is still Friday 21:00 in New York: outside the window, so Monday; in Sydney it is
    # Saturday 13:00 local, also Monday, but Monday 09:00 there is Sunday 22:00Z.
    at = utc(2026, 1, 10, 2, 0)
    assert next_open(at, window(), NEW_YORK) == utc(2026, 1, 12, 14, 0)
    assert next_open(at, window(), SYDNEY) == utc(2026, 1, 11, 22, 0)


@pytest.mark.parametrize(
    ("tz", "day_before", "before_utc", "after_utc"),
    [
        (NEW_YORK, datetime(2026, 3, 7), utc(2026, 3, 7, 14, 0), utc(2026, 3, 8, 13, 0)),
        (NEW_YORK, datetime(2026, 10, 31), utc(2026, 10, 31, 13, 0), utc(2026, 11, 1, 14, 0)),
        (LONDON, datetime(2026, 3, 28), utc(2026, 3, 28, 9, 0), utc(2026, 3, 29, 8, 0)),
        (LONDON, datetime(2026, 10, 24), utc(2026, 10, 24, 8, 0), utc(2026, 10, 25, 9, 0)),
        (SYDNEY, datetime(2026, 10, 3), utc(2026, 10, 2, 23, 0), utc(2026, 10, 3, 22, 0)),
        (SYDNEY, datetime(2026, 4, 4), utc(2026, 4, 3, 22, 0), utc(2026, 4, 4, 23, 0)),
    ],
    ids=["ny-spring", "ny-fall", "london-spring", "london-fall", "sydney-spring", "sydney-fall"],
)
def test_nine_am_window_stays_nine_am_across_dst(
    tz: ZoneInfo, day_before: datetime, before_utc: datetime, after_utc: datetime
) -> None:
    daily = window("daily", "09:00", "11:00")
    # From after the window closes the day before, the next opening is 09:00 local on the change day.
    noon_before = day_before.replace(hour=12, tzinfo=tz)
    assert next_open(noon_before, daily, tz) == after_utc
    # And a one-day delay from the previous 09:00 send keeps the wall time, not the 24h interval.
    assert add_delay(before_utc, timedelta(days=1), tz) == after_utc
    assert wall(before_utc, tz).time() == wall(after_utc, tz).time() == time(9, 0)
    # The UTC offset really did change, so this is not a trivially fixed-offset case.
    assert before_utc.astimezone(tz).utcoffset() != after_utc.astimezone(tz).utcoffset()
    assert after_utc - before_utc != timedelta(days=1)


def test_next_open_window_entirely_inside_dst_gap_skips_that_day() -> None:
    # 02:00-02:45 never exists on 2026-03-08 in New York; the moved start (03:00) is past the end.
    at = datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK)
    assert next_open(at, window("daily", "02:00", "02:45"), NEW_YORK) == utc(
        2026, 3, 9, 6, 0
    )  # Mon 02:00 EDT
    # With a Sunday-only window the next chance is a week later.
    assert next_open(at, window("sun", "02:00", "02:45"), NEW_YORK) == utc(2026, 3, 15, 6, 0)


def test_next_open_window_starting_in_dst_gap_opens_when_clock_resumes() -> None:
    gap_window = window("daily", "02:00", "04:00")
    at = datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK)
    assert next_open(at, gap_window, NEW_YORK) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    inside = datetime(2026, 3, 8, 3, 10, tzinfo=NEW_YORK)
    assert next_open(inside, gap_window, NEW_YORK) == utc(2026, 3, 8, 7, 10)


def test_next_open_window_start_mid_gap_opens_when_clock_resumes() -> None:
    # London jumps 01:00 GMT -> 02:00 BST. A 01:45-03:00 window is open from 02:00 BST (01:00Z), because that
    # local time is inside it; moving the start by the whole gap (02:45) would contradict the inside test.
    mid_gap = window("daily", "01:45", "03:00")
    assert next_open(datetime(2026, 3, 29, 0, 0, tzinfo=LONDON), mid_gap, LONDON) == utc(2026, 3, 29, 1, 0)
    assert next_open(utc(2026, 3, 29, 1, 0), mid_gap, LONDON) == utc(2026, 3, 29, 1, 0)
    # New York 02:30-03:15 still exists as 03:00-03:15 EDT on the spring-forward day.
    short = window("daily", "02:30", "03:15")
    assert next_open(datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK), short, NEW_YORK) == utc(2026, 3, 8, 7, 0)
    # Lord Howe's gap is only 30 minutes (02:00 -> 02:30 +11): a 02:15 start opens at 02:30 local.
    late = window("daily", "02:15", "03:00")
    at = datetime(2026, 10, 4, 0, 0, tzinfo=LORD_HOWE)
    assert next_open(at, late, LORD_HOWE) == utc(2026, 10, 3, 15, 30)


def test_next_open_window_start_in_repeated_hour() -> None:
    fold_window = window("daily", "01:45", "03:00")
    first_0130 = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)  # 05:30Z, EDT
    second_0130 = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK)  # 06:30Z, EST
    assert next_open(first_0130, fold_window, NEW_YORK) == utc(2026, 11, 1, 5, 45)
    # The first 01:45 has passed, but the clock shows 01:45 again an hour later: never return a past instant.
    assert next_open(second_0130, fold_window, NEW_YORK) == utc(2026, 11, 1, 6, 45)
    # Inside is judged by the local clock, so the second 01:30 is inside a 01:00-02:00 window.
    assert next_open(second_0130, window("daily", "01:00", "02:00"), NEW_YORK) == utc(2026, 11, 1, 6, 30)


def test_next_open_gives_up_after_lookahead() -> None:
    # Validation makes this unreachable, so bypass it to prove the guard exists rather than looping forever.
    broken = object.__new__(SendWindow)
    object.__setattr__(broken, "days", frozenset())
    object.__setattr__(broken, "start", time(9))
    object.__setattr__(broken, "end", time(10))
    with pytest.raises(ScheduleError, match="does not open within 14 days"):
        next_open(utc(2026, 1, 1), broken, NEW_YORK)


SWEEP_WINDOWS = [
    window("mon-fri", "09:00", "17:00"),
    window("daily", "02:00", "02:45"),
    window("daily", "01:45", "03:00"),
    window("sun", "02:00", "04:00"),
    window("wed", "23:30", "23:45"),
]


def _inside(instant: datetime, send_window: SendWindow, tz: ZoneInfo) -> bool:
    shown = wall(instant, tz)
    return shown.weekday() in send_window.days and send_window.start <= shown.time() < send_window.end


@pytest.mark.parametrize("tz", SWEEP_ZONES, ids=SWEEP_IDS)
def test_next_open_sweep_is_inside_and_earliest(tz: ZoneInfo) -> None:
    # Hourly instants around each transition, against windows chosen to hit gaps and folds. Window edges and
    # DST shifts are all multiples of 15 minutes, so scanning in 15-minute steps proves nothing earlier fits.
    quarter = timedelta(minutes=15)
    for day in TRANSITION_DAYS[tz]:
        first = localize(day - timedelta(days=1), tz)
        for hour in range(72):
            at = first + timedelta(hours=hour)
            for send_window in SWEEP_WINDOWS:
                result = next_open(at, send_window, tz)
                assert result.tzinfo is UTC
                assert result >= at
                assert _inside(result, send_window, tz), (at, send_window)
                assert next_open(result, send_window, tz) == result
                steps = (result - at) // quarter
                assert not any(_inside(at + k * quarter, send_window, tz) for k in range(steps)), (
                    at,
                    send_window,
                )


# ------------------------------------------------------------------------------------------ schedule_steps

DRIP_DELAYS = [parse_delay(text) for text in ["0", "2d", "2d", "3d", "3d", "4d", "4d", "3d"]]


def test_schedule_steps_friday_night_signup_chicago() -> None:
    # Friday 2026-03-06 22:30 CST; Chicago springs forward on Sunday 03-08: every send is 09:00 CDT = 14:00Z.
    anchor = datetime(2026, 3, 6, 22, 30, tzinfo=CHICAGO)
    business_hours = window("mon-fri", "09:00", "11:00")
    due = schedule_steps(anchor, DRIP_DELAYS, business_hours, CHICAGO)
    assert due == [
        utc(2026, 3, 9, 14, 0),  # Mon (0 -> Fri night rolls to Monday)
        utc(2026, 3, 11, 14, 0),  # Wed (+2d)
        utc(2026, 3, 13, 14, 0),  # Fri (+2d)
        utc(2026, 3, 16, 14, 0),  # Mon (+3d)
        utc(2026, 3, 19, 14, 0),  # Thu (+3d)
        utc(2026, 3, 23, 14, 0),  # Mon (+4d)
        utc(2026, 3, 27, 14, 0),  # Fri (+4d)
        utc(2026, 3, 30, 14, 0),  # Mon (+3d)
    ]
    locals_ = [wall(moment, CHICAGO) for moment in due]
    assert locals_[0] == datetime(2026, 3, 9, 9, 0)
    assert all(moment.tzinfo is UTC for moment in due)
    assert all(local.weekday() < 5 and time(9) <= local.time() < time(11) for local in locals_)
    assert due == sorted(due)


def test_schedule_steps_winter_friday_night_signup_chicago() -> None:
    # Same drip without a DST change: all sends at 09:00 CST = 15:00Z.
    anchor = datetime(2026, 1, 9, 22, 30, tzinfo=CHICAGO)
    due = schedule_steps(anchor, DRIP_DELAYS, window("mon-fri", "09:00", "11:00"), CHICAGO)
    assert [moment.date().isoformat() for moment in due] == [
        "2026-01-12",
        "2026-01-14",
        "2026-01-16",
        "2026-01-19",
        "2026-01-22",
        "2026-01-26",
        "2026-01-30",
        "2026-02-02",
    ]
    assert {moment.time() for moment in due} == {time(15, 0)}


def test_schedule_steps_chain_from_adjusted_time_so_weekend_signups_do_not_bunch() -> None:
    saturday = datetime(2026, 1, 10, 12, 0, tzinfo=NEW_YORK)
    due = schedule_steps(saturday, [timedelta(0), timedelta(days=1)], window(), NEW_YORK)
    assert due == [utc(2026, 1, 12, 14, 0), utc(2026, 1, 13, 14, 0)]  # Monday, then Tuesday
    # And a delay that lands on a weekend rolls to Monday rather than skipping it.
    thursday = datetime(2026, 1, 8, 10, 0, tzinfo=NEW_YORK)
    assert schedule_steps(thursday, [timedelta(0), timedelta(days=2)], window(), NEW_YORK) == [
        utc(2026, 1, 8, 15, 0),  # Thursday 10:00 is inside the window
        utc(2026, 1, 12, 14, 0),  # Saturday 10:00 waits for Monday's 09:00 opening
    ]


def test_schedule_steps_elapsed_delays_across_dst_are_exact() -> None:
    anchor = datetime(2026, 3, 7, 23, 0, tzinfo=NEW_YORK)  # 2026-03-08 04:00Z
    six_hours = parse_delay("6h")
    due = schedule_steps(anchor, [six_hours, six_hours, six_hours], None, NEW_YORK)
    assert due == [utc(2026, 3, 8, 10, 0), utc(2026, 3, 8, 16, 0), utc(2026, 3, 8, 22, 0)]
    assert due[1] - due[0] == due[2] - due[1] == six_hours
    assert [wall(moment, NEW_YORK).hour for moment in due] == [6, 12, 18]


def test_schedule_steps_empty_and_utc_output() -> None:
    assert schedule_steps(utc(2026, 1, 1), [], window(), NEW_YORK) == []
    due = schedule_steps(datetime(2026, 1, 14, 10, 0, tzinfo=LONDON), [timedelta(0)], None, LONDON)
    assert due == [utc(2026, 1, 14, 10, 0)]
    assert due[0].tzinfo is UTC


# -------------------------------------------------------------------------------------------- naive input


@pytest.mark.parametrize(
    "call",
    [
        lambda naive: add_delay(naive, timedelta(days=1), NEW_YORK),
        lambda naive: add_delay(naive, timedelta(hours=1), NEW_YORK),
        lambda naive: next_open(naive, window(), NEW_YORK),
        lambda naive: next_open(naive, None, NEW_YORK),
        lambda naive: schedule_steps(naive, [timedelta(0)], window(), NEW_YORK),
        lambda naive: schedule_steps(naive, [], None, NEW_YORK),
    ],
    ids=["add_delay-days", "add_delay-hours", "next_open", "next_open-no-window", "steps", "steps-empty"],
)
def test_naive_datetimes_are_rejected(call: Callable[[datetime], object]) -> None:
    with pytest.raises(ScheduleError, match=r"^naive datetime$"):
        call(datetime(2026, 1, 14, 10, 0))
