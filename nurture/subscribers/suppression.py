"""The suppression list: addresses nurture never mails again (hard bounces, complaints, erasures).

One place adds to it and one place reads it, so a bounce, the sender, the confirmation outbox, imports, staff
actions and the subscriber list all agree on who is suppressed. An erasure leaves only a hash of the address
(``erased_key``): enough to refuse the address again, not to read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nurture.core.db import among, on_postgresql
from nurture.models import Subscriber, Suppression

# Addresses per IN list on SQLite (PostgreSQL takes any number as one array parameter).
CHUNK = 500


def erased_key(email: str) -> str:
    """The anonymous suppression left when an address is erased: enough to refuse it, not to read it."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def suppress(session: Session, email: str, reason: str, detail: str | None = None) -> None:
    """Add to the suppression list once; a concurrent insert of the same address is not an error."""
    if is_suppressed(session, email):
        return
    try:
        with session.begin_nested():
            session.add(Suppression(email=email, reason=reason, detail=detail))
    except IntegrityError:
        pass


def suppress_erased(session: Session, email: str) -> None:
    """Leave the anonymous hash for an erased address and drop its plain entry (personal data too)."""
    address = email.strip().lower()
    suppress(session, erased_key(address), "erased")
    session.execute(delete(Suppression).where(Suppression.email == address))


def is_suppressed(session: Session, email: str) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email == email)) is not None


def subscriber_is_suppressed() -> Any:
    """A SQL condition, true for a ``Subscriber`` row whose address is on the list (for batch reads and
    filters). An erased address has no subscriber row left, so its hash needs no check here."""
    return exists().where(Suppression.email == Subscriber.email)


def suppressed_among(session: Session, emails: Iterable[str]) -> set[str]:
    """Which of these (normalised) addresses are suppressed, by plain address or by erasure hash."""
    wanted = list(emails)
    found: set[str] = set()
    step = (len(wanted) or 1) if on_postgresql(session) else CHUNK
    for start in range(0, len(wanted), step):
        chunk = wanted[start : start + step]
        keys = {address: erased_key(address) for address in chunk}
        rows = set(
            session.scalars(
                select(Suppression.email).where(among(session, Suppression.email, [*chunk, *keys.values()]))
            )
        )
        found |= {address for address in chunk if address in rows or keys[address] in rows}
    return found
