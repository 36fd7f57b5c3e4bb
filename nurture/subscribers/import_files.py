"""An uploaded subscriber file read into checked rows: the columns, each address and name validated, and
every refused row with its line number and reason (nurture.subscribers.importer writes the good ones)."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nurture.core import safe_csv
from nurture.core.addresses import MAX_EMAIL_LENGTH, InvalidInput, clean_name, clean_zone, normalise_email

REQUIRED_COLUMNS = ("email",)
KNOWN_COLUMNS = ("email", "first_name", "timezone")
MAX_ATTRIBUTE_LENGTH = 500


@dataclass(frozen=True)
class RowError:
    line: int
    email: str
    message: str


@dataclass
class ImportReport:
    imported: int = 0  # new subscribers, enrolled
    enrolled_existing: int = 0  # already subscribed and active: enrolled if they were not
    already_enrolled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # unsubscribed, suppressed, not-confirmed
    errors: list[RowError] = field(default_factory=list)

    def as_dict(self, *, most_errors: int | None = None) -> dict[str, Any]:
        """The report as JSON: the counts, and the refused rows (the first ``most_errors`` of them)."""
        return {
            "imported": self.imported,
            "enrolled_existing": self.enrolled_existing,
            "already_enrolled": self.already_enrolled,
            "skipped": dict(self.skipped),
            "errors": [{"line": e.line, "email": e.email, "message": e.message} for e in self.errors][
                :most_errors
            ],
        }


@dataclass(frozen=True)
class GoodRow:
    line: int
    email: str
    first_name: str | None
    timezone: str | None
    attributes: dict[str, str]


class ImportError_(ValueError):
    """The file as a whole cannot be imported (not CSV, no email column); nothing was written."""


# A plain ASCII dot-atom local part: for these, email_validator's answer depends only on the domain, so the
# domain is validated (by email_validator itself) once per file instead of once per row.
_SIMPLE_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class _Addresses:
    """normalise_email with the per-domain work cached; anything unusual goes through normalise_email."""

    def __init__(self) -> None:
        self.domains: dict[str, str | None] = {}  # raw domain -> normalised domain, None when invalid

    def normalise(self, raw: str) -> str:
        if not raw.isprintable():  # control characters: refused by normalise_email, with its message
            return normalise_email(raw)
        value = raw.strip()
        local, at, domain = value.rpartition("@")
        if (
            at
            and len(value) <= MAX_EMAIL_LENGTH
            and len(local) <= 64
            and domain.isascii()
            and _SIMPLE_LOCAL.fullmatch(local)
        ):
            if domain not in self.domains:
                try:
                    self.domains[domain] = normalise_email("a@" + domain).partition("@")[2]
                except InvalidInput:
                    self.domains[domain] = None
            normalised = self.domains[domain]
            if normalised is not None:
                return (local + "@" + normalised).lower()
        return normalise_email(raw)  # the full check, and its exact error message


def read_csv(data: bytes) -> tuple[list[GoodRow], list[RowError]]:
    """Parse and validate every row; a bad row is reported and left out whole. BOM and CRLF are fine.

    Rows get the same checks as the signup form (nurture.core.addresses), and cells are read through
    ``csvsafe.unescape``, so a file nurture exported imports back as the values it held."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportError_("the file is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportError_("the file is empty") from None
    except csv.Error as exc:
        raise ImportError_(f"not a CSV file: {exc}") from None
    if "email" not in header:
        raise ImportError_(f"the header row needs an 'email' column; found {', '.join(header) or 'nothing'}")
    if len(set(header)) != len(header):
        raise ImportError_("the header row names a column twice")
    good: list[GoodRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    addresses = _Addresses()
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                errors.append(RowError(line, "", f"has {len(row)} fields, the header has {len(header)}"))
                continue
            values = dict(zip(header, map(safe_csv.unescape, row), strict=True))
            raw_email = values["email"]
            try:
                address = addresses.normalise(raw_email)
                name = clean_name(values.get("first_name") or None)
                tz = clean_zone(values.get("timezone"))
                attributes = {k: v.strip() for k, v in values.items() if k not in KNOWN_COLUMNS and v.strip()}
                if any(len(v) > MAX_ATTRIBUTE_LENGTH for v in attributes.values()):
                    raise InvalidInput(
                        "attributes", f"values must be at most {MAX_ATTRIBUTE_LENGTH} characters"
                    )
            except InvalidInput as exc:
                errors.append(RowError(line, raw_email[:254], str(exc)))
                continue
            if address in seen:
                errors.append(RowError(line, address, f"duplicate of line {seen[address]}"))
                continue
            seen[address] = line
            good.append(GoodRow(line, address, name, tz, attributes))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, "", f"unreadable CSV: {exc}"))
    return good, errors
