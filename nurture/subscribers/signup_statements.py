"""The statements a signup runs, built once at import (compiled once per process, then cached).

Benchmark 3 drives 200 signups a second at a two-core machine, so a signup is counted in statements and
round trips (tests/subscribers/test_signup_statements.py pins the numbers):

* PostgreSQL, new address: :data:`NEW_ADDRESS`, one statement. Its data-modifying CTEs count the client's
  rate-limit hit, insert the subscriber (``ON CONFLICT (email) DO NOTHING``; only when the hit counted), and
  from that row the consent record, the outbox confirmation and the ``signup`` event.
* PostgreSQL, known address: the same statement writes nothing but the hit, then :data:`LOCK_SUBSCRIBER`,
  the quota count and :data:`LEDGER` (consent record + confirmation + event for a given subscriber id); a
  repeat signup (nurture.models.abuse_limits.CONFIRM_REPEAT_WINDOW) stops before the ledger.
* SQLite (no data-modifying CTEs): one Core statement per row, the tables' Python defaults filling in.

SQLAlchemy cannot fill Python column defaults into inserts nested in a WITH, so the CTE statements take every
column as a parameter and :func:`ledger_params` / :func:`new_address_params` supply the values those
defaults would give (a random public id, now, ``pending``, no attempts).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    Boolean,
    Column,
    ColumnElement,
    Executable,
    Select,
    String,
    Table,
    bindparam,
    exists,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import BindParameter

from nurture.models import (
    ConsentRecord,
    Event,
    OutboxMessage,
    OutboxStatus,
    Sequence,
    Subscriber,
    SubscriberStatus,
    abuse_limits,
)
from nurture.models.subscribers import new_public_id
from nurture.subscribers.confirmation import CONFIRM

# Filled in when the address owner confirms, never by a signup.
_CONFIRMED_COLUMNS = ("confirmed_at", "confirm_ip", "confirm_user_agent")
_subscribers: Table = Subscriber.__table__  # type: ignore[assignment]


def _param(column: Column[Any], prefix: str) -> BindParameter[Any]:
    # Prefixed names: the nested inserts share column names (created_at, subscriber_id, kind).
    return bindparam(f"{prefix}_{column.key}", type_=column.type)


# --- one statement per row (SQLite; PostgreSQL for what the CTEs do not cover) ---------------------------


def _new_subscriber_statement(insert: Callable[[Table], postgresql.Insert | sqlite.Insert]) -> Executable:
    """``INSERT ... ON CONFLICT (email) DO NOTHING RETURNING id``: a new address's id, or no row for a known
    one. Two first signups of one new address do not raise: the second waits on the first's uncommitted
    row and, once it commits, finds the address taken. The table's Python defaults fill in the rest."""
    return (
        insert(_subscribers)
        .values(email=bindparam("s_email", type_=String()), status=SubscriberStatus.pending)
        .on_conflict_do_nothing(index_elements=[_subscribers.c.email])
        .returning(_subscribers.c.id)
    )


NEW_SUBSCRIBER = {
    "postgresql": _new_subscriber_statement(postgresql.insert),
    "sqlite": _new_subscriber_statement(sqlite.insert),
}
# The lock serialises signups of one known address, so two cannot both pass the confirmation quota.
LOCK_SUBSCRIBER = (
    select(_subscribers.c.id)
    .where(_subscribers.c.email == bindparam("s_email", type_=String()))
    .with_for_update()
)
# Only the status matters: is the course one people can sign up for.
SEQUENCE_STATUS = select(Sequence.__table__.c.status).where(
    Sequence.__table__.c.slug == bindparam("slug", type_=String())
)


# --- PostgreSQL: the consent record, the confirmation and the event in one statement --------------------


def _ledger_ctes(subscriber_id: ColumnElement[int]) -> list[CTE]:
    """Inserts of the consent record, its outbox confirmation and the signup event, as CTEs, for the
    subscriber ``subscriber_id`` names (a parameter, or the id a sibling CTE returned)."""
    records, messages, log = ConsentRecord.__table__, OutboxMessage.__table__, Event.__table__
    record_columns = [c for c in records.c if c.key not in {"id", *_CONFIRMED_COLUMNS}]
    record = (
        insert(records)
        .from_select(
            [c.key for c in record_columns],
            select(*(subscriber_id if c.key == "subscriber_id" else _param(c, "c") for c in record_columns)),
        )
        .returning(records.c.id, records.c.subscriber_id)
        .cte("record")
    )
    message = insert(messages).from_select(
        ["kind", "subscriber_id", "consent_id", "status", "due_at", "attempts", "created_at"],
        select(
            _param(messages.c.kind, "o"),
            record.c.subscriber_id,
            record.c.id,
            _param(messages.c.status, "o"),
            _param(messages.c.due_at, "o"),
            _param(messages.c.attempts, "o"),
            _param(messages.c.created_at, "o"),
        ),
    )
    event = insert(log).from_select(
        ["kind", "subscriber_id", "delivery_id", "detail", "created_at"],
        select(
            _param(log.c.kind, "e"),
            subscriber_id,
            _param(log.c.delivery_id, "e"),
            _param(log.c.detail, "e"),
            _param(log.c.created_at, "e"),
        ),
    )
    return [record, message.cte("message"), event.cte("event")]


def _ledger_statement() -> Select[Any]:
    """The three rows for a known subscriber (``c_subscriber_id``); answers the consent record's id."""
    record, message, event = _ledger_ctes(bindparam("c_subscriber_id", type_=_subscribers.c.id.type))
    return select(record.c.id).add_cte(message, event)


def _new_address_statement() -> Select[Any]:
    """Rate-limit hit, subscriber and the three ledger rows in one statement; answers ``(hits,
    subscriber_id)``: hits NULL when the window is full (then nothing else was written), subscriber_id
    NULL when the address is already on file or ``s_write`` is false (then only the hit was written).

    Nothing is inserted only to be rolled back: a rolled-back insert still uses up ids from the tables'
    sequences, and refused signups must not be a way to exhaust them.
    """
    hit = abuse_limits.hit_statement(postgresql.insert).cte("hit")
    columns = ["public_id", "email", "status", "attributes", "created_at"]
    subscriber = (
        postgresql.insert(_subscribers)
        .from_select(
            columns,
            select(*(_param(_subscribers.c[name], "s") for name in columns)).where(
                exists(select(literal(1)).select_from(hit)),
                bindparam("s_write", type_=Boolean()),  # False: the signup is refused anyway (bad course)
                # A known address skips the insert rather than conflicting: a conflict would still draw
                # (and waste) a subscriber id from the sequence. ON CONFLICT remains for the race with a
                # concurrent first signup this snapshot cannot see.
                ~exists(select(literal(1)).where(_subscribers.c.email == _param(_subscribers.c.email, "s"))),
            ),
        )
        .on_conflict_do_nothing(index_elements=[_subscribers.c.email])
        .returning(_subscribers.c.id)
        .cte("new_subscriber")
    )
    ledger = _ledger_ctes(subscriber.c.id)
    return select(
        select(hit.c.count).scalar_subquery().label("hits"),
        select(subscriber.c.id).scalar_subquery().label("subscriber_id"),
    ).add_cte(*ledger)


LEDGER = _ledger_statement()
NEW_ADDRESS = _new_address_statement()


def ledger_params(row: dict[str, Any], source: str, now: datetime) -> dict[str, Any]:
    """Parameters of the ledger CTEs: ``row`` is :func:`nurture.subscribers.consent.signup_row`'s columns;
    the rest are the values the tables' defaults give. :data:`LEDGER` also needs ``c_subscriber_id``."""
    params = {f"c_{key}": value for key, value in row.items()}
    params.update(c_public_id=new_public_id(), c_created_at=now)
    params.update(o_kind=CONFIRM, o_status=OutboxStatus.pending, o_due_at=now, o_attempts=0, o_created_at=now)
    params.update(e_kind="signup", e_delivery_id=None, e_detail={"source": source}, e_created_at=now)
    return params


def new_address_params(
    window: abuse_limits.Window, email: str, row: dict[str, Any], source: str, now: datetime, *, write: bool
) -> dict[str, Any]:
    """Parameters of :data:`NEW_ADDRESS`: the hit's, the subscriber's (as its table's defaults would give
    them) and the ledger's. ``write=False`` counts the hit only."""
    params = {**window.params(), **ledger_params(row, source, now), "s_write": write}
    params.update(s_public_id=new_public_id(), s_email=email, s_status=SubscriberStatus.pending)
    params.update(s_attributes={}, s_created_at=now)
    return params
