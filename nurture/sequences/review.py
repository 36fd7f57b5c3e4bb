"""Who reviewed a sequence's content and when (``reviewed_by`` / ``reviewed_on`` in the sequence file).

A clinic shows in each email's footer who signed the course off, so the two go together: a name without a
date (or a date without a name) says less than it seems to, and is refused. Like the policy keys, they are
kept in the canonical definition only when set, so files without them keep their digest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from nurture.core import clock

REVIEW_KEYS = {"reviewed_by", "reviewed_on"}
MAX_REVIEWER = 200
# English month names, not strftime's %B, which follows the process locale.
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class Review:
    by: str | None = None
    on: date | None = None

    @property
    def is_set(self) -> bool:
        return self.by is not None and self.on is not None

    @classmethod
    def of(cls, definition: Mapping[str, Any] | None) -> Review:
        """The review stored in a version's canonical definition (already validated)."""
        data = definition or {}
        by, on = data.get("reviewed_by"), data.get("reviewed_on")
        if not isinstance(by, str) or not isinstance(on, str):
            return cls()
        return cls(by, date.fromisoformat(on))

    @property
    def on_text(self) -> str | None:
        """The date as the footer shows it: "December 1, 2026" (no zero padding, no locale surprises)."""
        return f"{_MONTHS[self.on.month - 1]} {self.on.day}, {self.on.year}" if self.on is not None else None

    def canonical(self) -> dict[str, str]:
        if not self.is_set or self.on is None:
            return {}
        return {"reviewed_by": str(self.by), "reviewed_on": self.on.isoformat()}


NO_REVIEW = Review()


def parse_review(raw: Mapping[str, Any], problem: Callable[[str], None]) -> Review:
    """Validate ``reviewed_by`` and ``reviewed_on`` when present; both or neither."""
    present = REVIEW_KEYS & set(raw)
    if not present:
        return NO_REVIEW
    if present != REVIEW_KEYS:
        missing = (REVIEW_KEYS - present).pop()
        problem(f"{present.pop()} needs {missing} too: the footer says who reviewed the course and when")
        return NO_REVIEW
    by = _reviewer(raw["reviewed_by"], problem)
    on = _review_date(raw["reviewed_on"], problem)
    if by is None or on is None:
        return NO_REVIEW
    return Review(by, on)


def _reviewer(value: Any, problem: Callable[[str], None]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problem("reviewed_by must be the reviewer's name and role, e.g. 'Dr Jane Doe, MD, psychiatrist'")
        return None
    text = " ".join(value.split())
    if len(text) > MAX_REVIEWER:
        problem(f"reviewed_by is longer than {MAX_REVIEWER} characters")
        return None
    return text


def _review_date(value: Any, problem: Callable[[str], None]) -> date | None:
    # YAML reads an unquoted 2026-12-01 as a date, a quoted one as text: both mean the same day.
    if isinstance(value, datetime):
        problem(f"reviewed_on {value!r} must be a date (YYYY-MM-DD), not a date and time")
        return None
    if isinstance(value, date):
        day = value
    elif isinstance(value, str):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            problem(f"reviewed_on {value!r} must be a date written YYYY-MM-DD, e.g. 2026-12-01")
            return None
    else:
        problem(f"reviewed_on {value!r} must be a date written YYYY-MM-DD, e.g. 2026-12-01")
        return None
    # A day of slack: east of Greenwich the reviewer's own date can be a day ahead of UTC's.
    if day > clock.now().date() + timedelta(days=1):
        problem(f"reviewed_on {day.isoformat()} is in the future: use the date the review was done")
        return None
    return day
