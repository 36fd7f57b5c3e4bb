"""Whole numbers that arrive as text (row ids in URL paths and forms, a count of days, a Content-Length):
parsed in one place, strictly.

``str.isdigit()`` is not a check for this: it is True for ``"²"`` (then ``int()`` raises, a 500) and for
``"١"`` or ``"１"`` (then ``int()`` reads 1, a different row than the text seems to name). Only ASCII digits
are accepted, at most 18 of them, so every value fits a signed 64-bit column and ``int()`` never sees a
string long enough to be slow or refused.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18  # 10**18 - 1 < 2**63 - 1: fits BIGINT, INTEGER PRIMARY KEY and Python's default int limits
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def parse_id(value: object) -> int | None:
    """The non-negative integer ``value`` spells in plain ASCII digits (no sign, no spaces), else None."""
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        return None
    return int(value)


MAX_ROW_ID = 2**31 - 1  # ids are INTEGER columns: a larger number names no row (and PostgreSQL refuses it)


def row_id(value: object) -> int | None:
    """A row id from a path or a form: plain digits that fit the column, else None."""
    parsed = parse_id(value)
    return parsed if parsed is not None and parsed <= MAX_ROW_ID else None
