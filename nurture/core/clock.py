"""The one source of "now": every comparison against due times goes through this module.

``now()`` is this process's clock; ``db_now(session)`` is the database server's, used wherever several
machines must agree (claiming due rows, leases), so a worker whose clock runs ahead never sends early.
Tests freeze or move the clock with :func:`set_now` / :func:`frozen`, which then drives both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select


def _system_now() -> datetime:
    return datetime.now(UTC)


_source: Callable[[], datetime] = _system_now


def now() -> datetime:
    """The current instant on this machine, timezone-aware in UTC."""
    return _source()


def is_set() -> bool:
    return _source is not _system_now


def db_now(session: Any) -> datetime:
    """The database server's current instant (aware UTC); the test clock when one is set.

    On PostgreSQL this is ``clock_timestamp()`` (``now()`` is frozen at transaction start). SQLite runs in
    this process, so its clock is this machine's.
    """
    if is_set() or session.get_bind().dialect.name != "postgresql":
        return now()
    return session.scalar(select(func.clock_timestamp())).astimezone(UTC)


class DatabaseClock:
    """The database's clock without a query per use: read once, then followed on this machine's monotonic
    clock, and read again every ``resync_seconds``. For leases, where milliseconds do not matter but a round
    trip per email does; due-time comparisons (the dispatch claim) still ask the database each time."""

    def __init__(self, resync_seconds: float = 30.0) -> None:
        self.resync_seconds = resync_seconds
        self.base: datetime | None = None
        self.base_monotonic = 0.0

    def now(self, session: Any) -> datetime:
        if is_set():
            return now()
        elapsed = time.monotonic() - self.base_monotonic
        if self.base is None or elapsed > self.resync_seconds:
            self.base, self.base_monotonic, elapsed = db_now(session), time.monotonic(), 0.0
        return self.base + timedelta(seconds=elapsed)


def set_now(value: datetime | Callable[[], datetime] | None) -> None:
    """Fix the clock at an instant, drive it with a function, or (None) return to the real clock."""
    global _source
    if value is None:
        _source = _system_now
    elif callable(value):
        _source = value
    else:
        if value.tzinfo is None:
            raise ValueError("the clock needs an aware datetime")
        fixed = value.astimezone(UTC)
        _source = lambda: fixed  # noqa: E731


@contextmanager
def frozen(at: datetime) -> Iterator[Callable[[timedelta], None]]:
    """Freeze the clock at ``at``; yields ``advance(delta)`` to move it forward."""
    current = [at.astimezone(UTC)]

    def advance(delta: timedelta) -> None:
        current[0] += delta

    set_now(lambda: current[0])
    try:
        yield advance
    finally:
        set_now(None)


class UnknownZone(ValueError):
    """A time-zone name that names no IANA zone."""


def zone(name: str | None) -> ZoneInfo:
    """Look up an IANA zone; a missing, empty or unknown name is :class:`UnknownZone`, never a KeyError."""
    cleaned = name.strip() if isinstance(name, str) else ""
    if not cleaned:
        raise UnknownZone(
            f"unknown time zone {name!r}" if not isinstance(name, str) else f"unknown time zone '{name}'"
        )
    try:
        return ZoneInfo(cleaned)
    # ZoneInfoNotFoundError is a KeyError; ValueError covers path-like keys; OSError covers directory names
    # on some platforms.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(f"unknown time zone '{name}'") from None
