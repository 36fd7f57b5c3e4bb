"""The one timetable (nurture.sequences.timetable): steps that skip the send window, holiday calendars, and
the reason each due time gives. Pure: no database.

Dates (2026): Christmas Day is a Friday; US Independence Day (Sat 07-04) is observed on Fri 07-03; Ireland
leaves summer time on Sun 10-25 and has its October Bank Holiday on Mon 10-26; in Great Britain Boxing Day
(Sat 12-26) is made up on Mon 12-28; Thanksgiving is Thu 11-26.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nurture.sequences.holidays import CalendarError, parse_calendar
from nurture.sequences.schedule import ScheduleError, SendWindow
from nurture.sequences.timetable import Rules, StepTiming, Timetable, country_of

NEW_YORK = ZoneInfo("America/New_York")
DUBLIN = ZoneInfo("Europe/Dublin")
LONDON = ZoneInfo("Europe/London")
WINDOW = SendWindow.parse("mon-fri", "09:00", "11:30")
US = Rules(WINDOW, "America/New_York", "US")
ONE_DAY, TWO_DAYS, FOUR_DAYS = timedelta(days=1), timedelta(days=2), timedelta(days=4)


def local(year: int, month: int, day: int, hour: int, minute: int = 0, tz: ZoneInfo = NEW_YORK) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz).astimezone(UTC)


# --- a step that skips the window ------------------------------------------------------------------------


def test_a_welcome_that_skips_the_window_goes_at_once_on_a_friday_afternoon() -> None:
    confirmed = local(2026, 12, 4, 16)  # Friday 16:00, after the window closed at 11:30
    steps = [StepTiming(timedelta(0), use_window=False), StepTiming(TWO_DAYS)]
    welcome, second = US.for_subscriber(None).plan(confirmed, steps)
    assert welcome.due == confirmed and welcome.skips_window and not welcome.moved
    assert welcome.note() == "sent at its due time: this step skips the send window"
    # The next step still counts from the welcome and still waits for the window: Sunday -> Monday 09:00.
    assert second.due == local(2026, 12, 7, 9) and not second.skips_window
    assert second.note() == "moved into the send window"


def test_without_the_opt_out_the_same_welcome_waits_until_monday() -> None:
    confirmed = local(2026, 12, 4, 16)
    (welcome,) = US.for_subscriber(None).plan(confirmed, [StepTiming(timedelta(0))])
    assert welcome.due == local(2026, 12, 7, 9)


def test_a_step_that_skips_the_window_ignores_holidays_too() -> None:
    christmas_evening = local(2026, 12, 25, 20)
    table = US.for_subscriber(None)
    assert table.fit(christmas_evening, use_window=False) == christmas_evening
    assert table.fit(christmas_evening) == local(2026, 12, 28, 9)


def test_an_opted_out_step_keeps_exact_elapsed_delays_across_a_dst_change() -> None:
    before = local(2026, 11, 1, 0, 30)  # US summer time ends at 02:00 that night
    steps = [StepTiming(timedelta(hours=3), use_window=False)]
    (placed,) = US.for_subscriber(None).plan(before, steps)
    assert placed.due - before == timedelta(hours=3)


# --- holidays ----------------------------------------------------------------------------------------------


def test_email_due_on_christmas_friday_waits_for_monday_and_says_why() -> None:
    thursday = local(2026, 12, 24, 9)
    (placed,) = US.for_subscriber(None).plan(thursday, [StepTiming(ONE_DAY)])
    assert placed.due == local(2026, 12, 28, 9)
    assert placed.holidays == ((date(2026, 12, 25), "Christmas Day"),)
    assert placed.note() == "moved past Christmas Day on Fri 2026-12-25"


def test_an_observed_holiday_on_a_friday_closes_the_window_that_friday() -> None:
    # Independence Day falls on a Saturday in 2026; the Friday before is the day off.
    thursday = local(2026, 7, 2, 10)
    (placed,) = US.for_subscriber(None).plan(thursday, [StepTiming(ONE_DAY)])
    assert placed.due == local(2026, 7, 6, 9)  # Monday, when the window opens
    assert placed.holidays == ((date(2026, 7, 3), "Independence Day (observed)"),)


def test_holiday_in_the_week_the_clocks_go_back_keeps_the_local_hour() -> None:
    # Ireland: summer time ends Sunday 10-25, the October Bank Holiday is Monday 10-26.
    rules = Rules(WINDOW, "Europe/Dublin", "IE")
    thursday = local(2026, 10, 22, 9, tz=DUBLIN)  # 08:00 UTC (IST, UTC+1)
    (placed,) = rules.for_subscriber(None).plan(thursday, [StepTiming(FOUR_DAYS)])
    assert placed.due == local(2026, 10, 27, 9, tz=DUBLIN)  # Tuesday 09:00 GMT
    assert placed.due.hour == 9 and thursday.hour == 8  # same wall clock, one hour later in UTC
    assert placed.holidays == ((date(2026, 10, 26), "October Bank Holiday"),)
    without = Rules(WINDOW, "Europe/Dublin").for_subscriber(None).plan(thursday, [StepTiming(FOUR_DAYS)])
    assert without[0].due == local(2026, 10, 26, 9, tz=DUBLIN)


def test_a_whole_dst_week_of_steps_with_a_holiday_in_it() -> None:
    # US summer time starts Sun 03-08; a course in that week keeps 09:00 local on both sides of the change.
    rules = Rules(WINDOW, "America/New_York", "US")
    friday = local(2026, 3, 6, 9)  # 14:00 UTC (EST)
    steps = [StepTiming(timedelta(0)), StepTiming(ONE_DAY), StepTiming(ONE_DAY), StepTiming(ONE_DAY)]
    due = rules.for_subscriber(None).due_times(friday, steps)
    assert due == [local(2026, 3, 6, 9), local(2026, 3, 9, 9), local(2026, 3, 10, 9), local(2026, 3, 11, 9)]
    assert [d.hour for d in due] == [14, 13, 13, 13]  # EST then EDT
    # And in November, with Veterans Day (Wed 11-11) in the week after the change back.
    monday = local(2026, 11, 9, 9)
    due = rules.for_subscriber(None).due_times(monday, [StepTiming(timedelta(0)), StepTiming(TWO_DAYS)])
    assert due == [local(2026, 11, 9, 9), local(2026, 11, 12, 9)]


def test_weekend_holidays_are_not_named_as_the_reason() -> None:
    # Irish subscriber: Christmas Friday and St Stephen's Day (Saturday, a closed day anyway).
    rules = Rules(WINDOW, "Europe/Dublin", "IE")
    (placed,) = rules.for_subscriber(None).plan(local(2026, 12, 24, 9, tz=DUBLIN), [StepTiming(ONE_DAY)])
    assert [name for _, name in placed.holidays] == ["Christmas Day"]


def test_a_run_of_holidays_longer_than_two_weeks_of_weekends_still_finds_the_next_open_day() -> None:
    mondays = SendWindow.parse("mon", "09:00", "10:00")
    table = Timetable(mondays, NEW_YORK, parse_calendar("US"))
    # Memorial Day is Monday 05-25; the next Monday opens.
    assert table.fit(local(2026, 5, 23, 12)) == local(2026, 6, 1, 9)


def test_holidays_without_a_window_close_the_whole_day() -> None:
    table = Rules(None, "America/New_York", "US").for_subscriber(None)
    assert table.fit(local(2026, 12, 25, 15)) == local(2026, 12, 26, 0)
    assert table.fit(local(2026, 12, 24, 15)) == local(2026, 12, 24, 15)


# --- whose calendar ------------------------------------------------------------------------------------


def test_the_subscribers_country_replaces_the_sequences_calendar() -> None:
    thursday = local(2026, 12, 24, 9, tz=LONDON)
    steps = [StepTiming(ONE_DAY)]
    american = US.for_subscriber("Europe/London").plan(thursday, steps)[0]
    british = US.for_subscriber("Europe/London", "GB").plan(thursday, steps)[0]
    assert american.due == local(2026, 12, 28, 9, tz=LONDON)
    assert british.due == local(2026, 12, 29, 9, tz=LONDON)  # Boxing Day is made up on Monday 12-28
    assert [name for _, name in british.holidays] == ["Christmas Day", "Boxing Day (observed)"]
    # Thanksgiving closes the window for US subscribers only.
    thanksgiving_eve = local(2026, 11, 25, 9)
    assert US.for_subscriber(None).fit(thanksgiving_eve + ONE_DAY) == local(2026, 11, 27, 9)
    assert US.for_subscriber(None, "gb").fit(thanksgiving_eve + ONE_DAY) == local(2026, 11, 26, 9)


def test_an_unknown_subscriber_country_falls_back_to_the_sequences_calendar() -> None:
    table = US.for_subscriber(None, "Atlantis")
    assert table.calendar == parse_calendar("US")


def test_a_sequence_without_holidays_ignores_the_subscribers_country() -> None:
    assert Rules(WINDOW, "America/New_York").for_subscriber(None, "US").calendar is None


def test_country_comes_from_the_subscribers_attributes() -> None:
    assert country_of({"country": "GB", "source": "import"}) == "GB"
    assert country_of({"country": "  "}) is None
    assert country_of({"country": 44}) is None
    assert country_of(None) is None


# --- calendars ---------------------------------------------------------------------------------------------


def test_calendar_codes_are_checked_against_the_holidays_library() -> None:
    assert parse_calendar(" us ").code == "US"
    assert parse_calendar("GB-sct").code == "GB-SCT"
    assert parse_calendar("GB-SCT").holiday(date(2026, 1, 2)) == "New Year Holiday"  # Scotland only
    assert parse_calendar("GB").holiday(date(2026, 1, 2)) is None
    assert parse_calendar("DE").holiday(date(2026, 10, 3)) == "German Unity Day"  # English names
    with pytest.raises(CalendarError, match="no holiday calendar for country 'XX'"):
        parse_calendar("XX")
    with pytest.raises(CalendarError, match="US has no subdivision 'ZZ'"):
        parse_calendar("US-ZZ")
    with pytest.raises(CalendarError, match="must be a country code"):
        parse_calendar("United States")


def test_a_naive_anchor_is_refused_even_with_no_steps() -> None:
    with pytest.raises(ScheduleError):
        US.for_subscriber(None).plan(datetime(2026, 1, 1), [])
