"""The one source of "now": every comparison against due times goes through :func:`now`.

Tests freeze or move it with :func:`set_now`; production code never calls ``datetime.now`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_source: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """The current instant, timezone-aware in UTC."""
    return _source()


def set_now(value: datetime | Callable[[], datetime] | None) -> None:
    """Fix the clock at an instant, drive it with a function, or (None) return to the real clock."""
    global _source
    if value is None:
        _source = lambda: datetime.now(UTC)  # noqa: E731
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
