"""A person's email address, first name and time zone from outside: validated and normalised at the edge.

These are the only checks of a person's details: the signup form and its JSON, the preferences page, CSV
import (CLI, admin page, API) and ``nurture subscribers add`` all call them, so no way in is weaker than
another. Names get the strictest treatment because they are written into email headers and greetings.
"""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_NAME_LENGTH = 100
# Bidirectional marks, embeddings, overrides and isolates: they make text display differently from what it is.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# The zero-width non-joiner and joiner are format characters that Persian, Indic scripts and emoji need;
# every other format character (bidi controls, zero-width space, BOM, soft hyphen...) only hides text.
_JOINERS = frozenset("\u200c\u200d")
_LINE_BREAKS_AND_CONTROLS = frozenset({"Cc", "Cs", "Zl", "Zp"})
# What a first name must not contain, as one pattern so a name is searched once. A name is interpolated
# into emails, where mail programs turn anything that looks like a link into one (phishing), and into the
# To: header, where an encoded word would be decoded by the reader's mail program.
_NOT_A_NAME = re.compile(
    r"(?P<encoded>=\?)"
    r"|(?P<at>@)"
    r"|(?P<link>://|\bwww\.|\b[a-z][a-z0-9+.-]*:[\w/+%]|\w\.[^\W\d_]{2})",  # scheme://, www., mailto:x, x.tld
    re.IGNORECASE,
)
_NOT_A_NAME_MESSAGES = {
    "encoded": "must be plain text, not an encoded word (=?...?=)",
    "at": "must not contain '@': give the name, not an address",
    "link": "must not be a web address or domain (write 'St. John', not 'St.John')",
}


class InvalidInput(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def unsafe_character(value: str) -> str | None:
    """Why ``value`` cannot be accepted anywhere (headers, pages, the database), or None."""
    if value.isprintable():  # every refused character is unprintable: most text is cleared in C
        return None
    for char in value:
        # Cc: C0/C1 controls (CR, LF, NUL, NEL...); Cs: lone surrogates (not encodable, crash drivers);
        # Zl/Zp: Unicode line and paragraph separators, which some mail software treats as line breaks.
        category = unicodedata.category(char)
        if category in _LINE_BREAKS_AND_CONTROLS:
            return "must not contain line breaks or control characters"
        if char in _BIDI_CONTROLS:
            return "must not contain text-direction control characters"
        if category == "Cf" and char not in _JOINERS:
            return "must not contain invisible formatting characters"
    return None


def normalise_email(raw: str) -> str:
    """A syntactically valid address that plain SMTP can carry, lower-cased (we treat addresses
    case-insensitively), or InvalidInput.

    nurture sends without SMTPUTF8, so a non-ASCII local part is refused here rather than failing at send
    time; a non-ASCII domain is kept in its IDNA (``xn--``) form, which plain SMTP carries. Deliverability
    (DNS) is not checked: it needs the network, and a typo'd domain fails at SMTP anyway.
    """
    if not isinstance(raw, str):
        raise InvalidInput("email", "must be text")
    problem = unsafe_character(raw)
    if problem:
        raise InvalidInput("email", problem)
    value = raw.strip()
    if not value:
        raise InvalidInput("email", "is required")
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", f"must be at most {MAX_EMAIL_LENGTH} characters")
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", str(exc)) from None
    assert result.ascii_email is not None  # always set when SMTPUTF8 is not allowed
    return result.ascii_email.lower()


def clean_name(raw: str | None) -> str | None:
    """A first name fit for a greeting and a header, or None; whitespace runs become one space. Anything
    unsafe is refused, not stripped, so an injection attempt is an error the caller sees."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("first_name", "must be text")
    problem = unsafe_character(raw)
    if problem:
        raise InvalidInput("first_name", problem)
    value = " ".join(raw.split())
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput("first_name", f"must be at most {MAX_NAME_LENGTH} characters")
    # Every refused pattern needs one of these characters; most names have none, and skip the search.
    found = any(char in value for char in "=@:.") and _NOT_A_NAME.search(value)
    if found:
        raise InvalidInput("first_name", _NOT_A_NAME_MESSAGES[found.lastgroup or "link"])
    return value or None


@lru_cache(maxsize=1)
def known_zones() -> frozenset[str]:
    """IANA zone names; the tz database's aliases for the host's own zone are not names people have."""
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in {"localtime", "Factory", "posixrules"} and not name.startswith(("posix/", "right/"))
    )


def clean_zone(raw: str | None) -> str | None:
    """One of :func:`known_zones` (surrounding spaces ignored), or None when empty, or InvalidInput."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("timezone", "must be text")
    value = raw.strip()
    if not value:
        return None
    if value not in known_zones():
        raise InvalidInput(
            "timezone", f"unknown time zone {value[:64]!r}: use an IANA name like Europe/Paris"
        )
    return value
