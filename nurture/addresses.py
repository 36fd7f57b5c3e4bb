"""Email addresses and names from outside: validated and normalised once, at the edge."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_NAME_LENGTH = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidInput(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalise_email(raw: str) -> str:
    """A syntactically valid address, lower-cased (we treat addresses case-insensitively), or InvalidInput.

    Deliverability (DNS) is not checked: it needs the network, and a typo'd domain fails at SMTP anyway.
    """
    if not isinstance(raw, str):
        raise InvalidInput("email", "must be text")
    if _CONTROL.search(raw):
        raise InvalidInput("email", "must not contain line breaks or control characters")
    value = raw.strip()
    if not value:
        raise InvalidInput("email", "is required")
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", f"must be at most {MAX_EMAIL_LENGTH} characters")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", str(exc)) from None
    return result.normalized.lower()


def clean_name(raw: str | None) -> str | None:
    """A first name fit for a greeting and a header, or None; control characters are refused, not stripped,
    so an injection attempt is an error the caller sees."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("first_name", "must be text")
    if _CONTROL.search(raw):
        raise InvalidInput("first_name", "must not contain line breaks or control characters")
    value = " ".join(raw.split())
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput("first_name", f"must be at most {MAX_NAME_LENGTH} characters")
    return value or None
