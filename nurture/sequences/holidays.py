"""Public-holiday calendars: which local dates a sequence's send window stays shut.

A sequence file names a calendar with ``holidays: US`` (an ISO 3166 country code the `holidays` library
knows, optionally with a subdivision: ``US-NY``, ``GB-SCT``). The dates come from that library rather than
from a list we keep, because holiday rules (observed days, moving feasts, new holidays) change and it is
maintained for exactly that. Names are in English where the library has an English translation, so staff
read "Christmas Day" in the timeline whatever the country.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date

import holidays

_CODE = re.compile(r"^([A-Za-z]{2,3})(?:-([A-Za-z0-9]{1,5}))?$")
_ENGLISH = ("en_US", "en_GB")


class CalendarError(ValueError):
    """A holiday calendar name the `holidays` library does not know; the message says what would do."""


@dataclass(frozen=True)
class HolidayCalendar:
    """One country's (or subdivision's) public holidays, observed days included."""

    code: str  # "US" or "US-NY", as normalised by parse_calendar

    @property
    def country(self) -> str:
        return self.code.split("-", 1)[0]

    @property
    def subdivision(self) -> str | None:
        return self.code.split("-", 1)[1] if "-" in self.code else None

    def holiday(self, day: date) -> str | None:
        """The holiday's name when ``day`` is one, else None."""
        return _year(self.country, self.subdivision, day.year).get(day)

    def closed(self, day: date) -> bool:
        return self.holiday(day) is not None


def parse_calendar(text: object) -> HolidayCalendar:
    """``"US"``, ``"us"`` or ``"US-NY"`` -> a calendar; a code the library does not know -> CalendarError."""
    if not isinstance(text, str) or not _CODE.match(text.strip()):
        raise CalendarError(f"holidays {text!r} must be a country code such as US, GB or US-NY")
    country, _, subdivision = text.strip().upper().partition("-")
    supported = _supported()
    if country not in supported:
        raise CalendarError(f"holidays {text!r}: no holiday calendar for country {country!r}")
    if subdivision and subdivision not in {s.upper() for s in supported[country]}:
        known = ", ".join(supported[country][:12]) or "none"
        raise CalendarError(f"holidays {text!r}: {country} has no subdivision {subdivision!r} (e.g. {known})")
    return HolidayCalendar(f"{country}-{subdivision}" if subdivision else country)


def calendar_or_none(text: object) -> HolidayCalendar | None:
    """A calendar for a stored or subscriber-supplied code, None when it is missing or unknown.

    Used where a bad value must not stop a send (a subscriber's imported ``country`` attribute, say): the
    sequence's own calendar applies instead.
    """
    if text is None or text == "":
        return None
    try:
        return parse_calendar(text)
    except CalendarError:
        return None


@functools.lru_cache(maxsize=1)
def _supported() -> dict[str, list[str]]:
    return holidays.list_supported_countries()


@functools.lru_cache(maxsize=512)
def _year(country: str, subdivision: str | None, year: int) -> dict[date, str]:
    # One year at a time, as a plain dict: the library's own object grows itself on lookups, which is not
    # something to share between threads; a cached dict per year is read-only.
    probe = holidays.country_holidays(country, subdiv=subdivision, years=year)
    language = next((lang for lang in _ENGLISH if lang in type(probe).supported_languages), None)
    if language is not None and language != type(probe).default_language:
        probe = holidays.country_holidays(country, subdiv=subdivision, years=year, language=language)
    return dict(probe.items())
