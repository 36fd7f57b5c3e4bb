"""Claims and leases on work tables: one set of rules for sequence deliveries, outbox messages and webhooks.

Both tables move rows ``pending -> queued -> sending -> (sent | failed | pending again)``. A claim marks a
batch ``queued`` under a random token and a lease; every later step changes a row only while it still carries
that token, so a reaper's decision and a slow worker's late write can never both win. Keeping these rules in
one module means a fix to one table's claim is a fix to the other's.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, any_, func, literal_column, select, update
from sqlalchemy.orm import Session

from nurture.config import Settings
from nurture.models import Delivery, OutboxMessage, WebhookDelivery

# The statuses are the same strings in both tables (DeliveryStatus and OutboxStatus).
PENDING, QUEUED, SENDING, AMBIGUOUS = "pending", "queued", "sending", "ambiguous"

Leased = type[Delivery] | type[OutboxMessage] | type[WebhookDelivery]


def new_token(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def claim_due(
    session: Session,
    model: Leased,
    *,
    token: str,
    limit: int,
    lease_seconds: int,
    now: datetime,
    only: tuple[ColumnElement[bool], ...] = (),
) -> list[int]:
    """Mark up to ``limit`` due rows ``queued`` under ``token`` (among those matching ``only``); returns
    their ids in id order. The ``status = 'pending'`` re-check in the UPDATE makes a claim exclusive."""
    choice = (
        model.status == PENDING,
        model.due_at <= now,
        *only,
    )
    claim = update(model).values(
        status=QUEUED, claim_token=token, lease_until=now + timedelta(seconds=lease_seconds)
    )
    if session.get_bind().dialect.name == "postgresql":
        # The row choice is an uncorrelated ARRAY(subquery): an InitPlan, run exactly once (so never more
        # than ``limit`` rows), and the UPDATE reaches the chosen rows by physical address (ctid) in one TID
        # scan instead of a primary-key probe each: about half the cost at 1M rows (docs/benchmarks.md). A
        # ctid cannot move under us: the subquery locked the row FOR UPDATE in this statement.
        ctid = literal_column("ctid")
        chosen = (
            select(ctid)
            .select_from(model.__table__)
            .where(*choice)
            .order_by(model.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = claim.where(ctid == any_(func.array(chosen)), model.status == PENDING)
    else:
        # SQLite (its write lock serialises claims): a CTE, evaluated once. As an ``IN (subquery)`` a
        # planner may rescan the LIMIT subquery and claim more rows than the limit.
        due = select(model.id).where(*choice).order_by(model.due_at).limit(limit).cte("due")
        claim = claim.where(model.id == due.c.id, model.status == PENDING)
    rows = session.execute(claim.returning(model.id).execution_options(synchronize_session=False))
    return sorted(rows.scalars())


def still_claimed(model: Leased, ids: list[int], token: str) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clause of every write that may only happen while rows are queued under this claim."""
    return (model.id.in_(ids), model.claim_token == token, model.status == QUEUED)


def release(
    session: Session, model: Leased, token: str, ids: list[int], *, due_at: datetime | None = None
) -> int:
    """Give back claimed rows unsent (nothing counted against them): at once, or due again at ``due_at``
    (an unreachable server, an open breaker)."""
    values: dict[str, object] = {"status": PENDING, "claim_token": None, "lease_until": None}
    if due_at is not None:
        values["due_at"] = due_at
    result = session.execute(
        update(model)
        .where(*still_claimed(model, ids, token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def return_expired_claims(session: Session, model: Leased, now: datetime) -> int:
    """Queued rows whose worker never started them go back to pending: nothing was sent, nothing doubles."""
    result = session.execute(
        update(model)
        .where(model.status == QUEUED, model.lease_until < now)
        .values(status=PENDING, claim_token=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def settle_lost_sends(session: Session, model: Leased, now: datetime, *, policy: str) -> list[int]:
    """Rows whose lease ran out while ``sending``: the worker died between deciding to send and recording
    the outcome, so the server may have the message. They are held as ambiguous for a person, or returned to
    pending when the operator chose ``resend``. Returns their ids."""
    died = list(session.scalars(select(model.id).where(model.status == SENDING, model.lease_until < now)))
    if died:
        session.execute(
            update(model)
            .where(model.id.in_(died), model.status == SENDING)
            .values(
                status=PENDING if policy == "resend" else AMBIGUOUS,
                claim_token=None,
                lease_until=None,
                last_error="worker lost mid-send",
            )
            .execution_options(synchronize_session=False)
        )
    return died


def retry_backoff(settings: Settings, attempts: int) -> timedelta:
    """Exponential backoff after a temporary failure: base, 2×base, 4×base, ... capped."""
    seconds = settings.retry_base_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.retry_cap_seconds))
