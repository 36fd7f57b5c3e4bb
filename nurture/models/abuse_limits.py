"""Abuse limits, kept in the database so every web worker on every host shares them.

Why the database and not Redis: the signup already writes there, so the counter joins the signup's own
transaction. A refused or failed signup rolls its hit back (a 429 stores nothing, not even a count), and
SQLite-only installs get the same protection as PostgreSQL ones with no extra service.

* Per client IP: a fixed-window counter, one row per (key, window). The check-and-increment is a single
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE count < limit RETURNING count`` statement, atomic on SQLite
  and PostgreSQL alike; no row back means the window is full. IPv6 clients are counted per /64 (one host
  usually owns a whole /64), and keys are HMACs so the table holds no raw addresses.
* Per address: confirmation emails already are rows (the outbox), so the daily cap counts them over a
  rolling 24 hours; no separate counter to keep in step. The same query tells a repeat (a confirmation for
  the same course, still unused and still to be sent, was queued less than :data:`CONFIRM_REPEAT_WINDOW`
  ago): the signup then queues nothing.
* Anything else that must count once per window (a tracked link's clicks, sign-in attempts) uses the same
  counter rows under its own key; :func:`refund_hit` gives a hit back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Integer, String, Table, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.db import UTCDateTime
from nurture.models import ConsentRecord, OutboxMessage, RateLimitCounter, Subscriber

CONFIRM_WINDOW = timedelta(days=1)
# A signup of an address for a course whose confirmation email, still unused, was queued less than this long
# ago is a repeat (a double submit, a reload, a script): it queues nothing, so a burst sends one email. The
# answer is the same either way (no enumeration), and five minutes is enough for the first email to arrive.
# Another course is no repeat (two forms on one site); the daily cap bounds those.
CONFIRM_REPEAT_WINDOW = timedelta(minutes=5)


class RateLimited(Exception):
    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(f"{scope}: retry after {retry_after}s")
        self.scope = scope
        self.retry_after = retry_after


def client_key(scope: str, ip: str | None, secret: str) -> str:
    """A stable, non-reversible key for a client address (IPv6 collapsed to its /64)."""
    value = ip or "unknown"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
            value = str(ipaddress.IPv6Network(f"{address}/64", strict=False))
        elif isinstance(address, ipaddress.IPv6Address):
            value = str(address.ipv4_mapped)
    return hashed_key(scope, value, secret)


def hashed_key(scope: str, value: str, secret: str) -> str:
    """A counter key for ``value`` (an address, an account) that keeps ``value`` itself out of the table."""
    digest = hmac.new(secret.encode(), f"{scope}:{value}".encode(), hashlib.sha256).hexdigest()[:40]
    return f"{scope}:{digest}"


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def hit_statement(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert],
) -> postgresql.Insert | sqlite.Insert:
    """The check-and-increment upsert, built once per dialect: every signup runs it, and building and
    compiling it per request cost more CPU than executing it. Parameters: :meth:`Window.params`."""
    table = RateLimitCounter.__table__
    statement = insert(table).values(
        key=bindparam("rl_key", type_=table.c.key.type),
        window_start=bindparam("rl_start", type_=table.c.window_start.type),
        count=1,
        expires_at=bindparam("rl_end", type_=table.c.expires_at.type),
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.key, table.c.window_start],
        set_={"count": table.c.count + 1},
        where=table.c.count < bindparam("rl_limit", type_=Integer()),
    ).returning(table.c.count)


_HIT = {"postgresql": hit_statement(postgresql.insert), "sqlite": hit_statement(sqlite.insert)}


@dataclass(frozen=True)
class Window:
    """One fixed window's counter parameters, and how to refuse a hit in it."""

    key: str
    limit: int
    start: datetime
    end: datetime
    now: datetime

    @classmethod
    def of(cls, key: str, *, limit: int, window_seconds: int, now: datetime | None = None) -> Window:
        now = now or clock.now()
        start = datetime.fromtimestamp(math.floor(now.timestamp() / window_seconds) * window_seconds, tz=UTC)
        return cls(key, limit, start, start + timedelta(seconds=window_seconds), now)

    def params(self) -> dict[str, object]:
        """The bind parameters of :func:`hit_statement`."""
        return {"rl_key": self.key, "rl_start": self.start, "rl_end": self.end, "rl_limit": self.limit}

    def refused(self) -> RateLimited:
        """The window is full: no row came back from the upsert."""
        return RateLimited(self.key.split(":", 1)[0], _seconds_until(self.end, self.now))


def count_hit(connection: Connection, window: Window) -> None:
    """Count one hit in ``window``, or raise :class:`RateLimited` (counting nothing)."""
    statement = _HIT["postgresql" if connection.dialect.name == "postgresql" else "sqlite"]
    if connection.execute(statement, window.params()).scalar() is None:
        raise window.refused()


_counters = RateLimitCounter.__table__
_REFUND = (
    update(_counters)
    .where(
        _counters.c.key == bindparam("rl_key", type_=_counters.c.key.type),
        _counters.c.window_start == bindparam("rl_start", type_=_counters.c.window_start.type),
        _counters.c.count > 0,
    )
    .values(count=_counters.c.count - 1)
)


def refund_hit(connection: Connection, window: Window) -> None:
    """Give back a hit :func:`count_hit` counted in ``window`` (one atomic decrement, never below 0)."""
    connection.execute(_REFUND, {"rl_key": window.key, "rl_start": window.start})


# A confirmation that makes another signup for course ``q_course`` a repeat: queued since ``q_repeat_since``
# for that course, not used yet, and still to go (the outbox skips one queued before an unsubscribe).
_REPEATED = (
    (OutboxMessage.created_at > bindparam("q_repeat_since", type_=UTCDateTime()))
    & (ConsentRecord.sequence_slug == bindparam("q_course", type_=String()))
    & ConsentRecord.confirmed_at.is_(None)
    & or_(Subscriber.unsubscribed_at.is_(None), Subscriber.unsubscribed_at < OutboxMessage.created_at)
)
# Built once: the count runs on every signup of an address already on file.
_RECENT_CONFIRMATIONS = (
    select(func.count(), func.min(OutboxMessage.created_at), func.count(case((_REPEATED, 1))))
    .select_from(OutboxMessage)
    .join(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
    .outerjoin(ConsentRecord, ConsentRecord.id == OutboxMessage.consent_id)
    .where(
        OutboxMessage.subscriber_id == bindparam("q_subscriber", type_=Integer()),
        OutboxMessage.kind == "confirm",
        OutboxMessage.created_at > bindparam("q_since", type_=UTCDateTime()),
    )
)


def confirmation_wanted(
    connection: Connection, subscriber_id: int, course: str, *, limit: int, now: datetime | None = None
) -> bool:
    """Whether a signup of this address for ``course`` (a sequence slug) should queue a confirmation email:
    False for a repeat (see :data:`CONFIRM_REPEAT_WINDOW`). Raises :class:`RateLimited` once the address had
    ``limit`` in the last 24 hours. Concurrent signups of one address take turns (PostgreSQL: the caller
    holds the subscriber row ``FOR UPDATE``; SQLite: write transactions begin IMMEDIATE), each seeing what
    the one before queued."""
    now = now or clock.now()
    params = {
        "q_subscriber": subscriber_id,
        "q_since": now - CONFIRM_WINDOW,
        "q_repeat_since": now - CONFIRM_REPEAT_WINDOW,
        "q_course": course,
    }
    count, oldest, repeats = connection.execute(_RECENT_CONFIRMATIONS, params).one()
    if count >= limit:
        # ``min`` comes back without the column type on some backends: normalise it to aware UTC.
        oldest = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest))
        oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
        raise RateLimited("confirm", _seconds_until(oldest + CONFIRM_WINDOW, now))
    return repeats == 0


def purge_expired(session: Session, now: datetime | None = None) -> int:
    """Drop counters whose window has ended (called by the periodic outbox tick)."""
    result = session.execute(
        delete(RateLimitCounter)
        .where(RateLimitCounter.expires_at < (now or clock.now()))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
