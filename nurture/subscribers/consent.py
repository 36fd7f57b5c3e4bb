"""The consent wording people agree to, versioned, and the ledger rows that prove they agreed.

Released versions never change: the ledger stores the version *and* the exact rendered text, and old embed
snippets keep posting the version they show. To change the wording, add a new version and point ``CURRENT``
at it; ``tests/subscribers/test_consent.py`` pins the text of every released version, so an edit in place
fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import ConsentRecord

# Built once; the table's Python defaults (public_id, created_at) fill in what the caller leaves out.
_INSERT_RECORD = insert(ConsentRecord.__table__)

# version -> wording; ``{org_name}`` is filled from the settings when the form is shown and when recorded.
VERSIONS: dict[str, str] = {
    "2026-11-v1": (
        "Yes, please email me the free email course from {org_name}, a few messages over the coming weeks. "
        "I can unsubscribe at any time with the link in every email, and {org_name} keeps a record of "
        "this consent."
    ),
}
CURRENT = "2026-11-v1"


def text_of(version: str, org_name: str) -> str:
    """The exact words shown for ``version``; KeyError for an unknown version."""
    return VERSIONS[version].format(org_name=org_name)


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as the ledger records it (already truncated to the column sizes)."""

    ip: str | None
    user_agent: str | None
    form_url: str | None = None

    @classmethod
    def of(cls, ip: str | None, user_agent: str | None, form_url: str | None = None) -> Origin:
        return cls(_clip(ip, 64), _clip(user_agent, 512), _clip(form_url, 1000))


def _clip(value: str | None, size: int) -> str | None:
    if not value:
        return None
    # Headers arrive decoded as latin-1; anything odd is kept as evidence but never breaks the insert.
    cleaned = "".join(c if c.isprintable() else "?" for c in value)
    return cleaned[:size]


def record_signup(session: Session, subscriber_id: int, row: dict[str, Any]) -> ConsentRecord:
    """Add the consent record for ``row`` (:func:`signup_row`'s columns) as an ORM object, for callers that
    go on with it in the same session (resubscribing confirms it at once)."""
    record = ConsentRecord(subscriber_id=subscriber_id, **row)
    session.add(record)
    session.flush()
    return record


def signup_row(
    *,
    origin: Origin,
    source: str,
    version: str,
    org_name: str,
    sequence_slug: str | None,
    first_name: str | None,
    timezone: str | None,
) -> dict[str, Any]:
    """The columns a signup sets on its consent record (the table's defaults give public_id, created_at)."""
    return {
        "ip": origin.ip,
        "user_agent": origin.user_agent,
        "form_url": origin.form_url,
        "source": source,
        "consent_version": version,
        "consent_text": text_of(version, org_name),
        "sequence_slug": sequence_slug,
        "first_name": first_name,
        "timezone": timezone,
    }


def insert_signup(connection: Connection, subscriber_id: int, row: dict[str, Any]) -> int:
    """The record :func:`record_signup` adds, from :func:`signup_row`, as one Core INSERT (no ORM object, no
    flush): the signup's hot path. Returns the new record's id."""
    result = connection.execute(_INSERT_RECORD, {"subscriber_id": subscriber_id, **row})
    return result.inserted_primary_key[0]


def mark_confirmed(record: ConsentRecord, origin: Origin) -> None:
    record.confirmed_at = clock.now()
    record.confirm_ip = origin.ip
    record.confirm_user_agent = origin.user_agent
