"""Claim due deliveries for workers, and take back claims whose lease ran out.

A claim is one conditional UPDATE: only rows still ``pending`` and due move to ``queued``, stamped with a
claim token and a lease. On PostgreSQL the inner SELECT uses ``FOR UPDATE SKIP LOCKED`` so concurrent
dispatchers take disjoint rows without waiting on each other; on SQLite the write lock serialises them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from nurture import clock, events
from nurture.config import Settings, get_settings
from nurture.db import transaction
from nurture.models import Delivery, DeliveryStatus


@dataclass(frozen=True)
class Claim:
    token: str
    delivery_ids: list[int]


@dataclass(frozen=True)
class ReapResult:
    returned: int  # queued rows whose task never ran: back to pending
    ambiguous: int  # rows that died mid-send: held as ambiguous (or returned, if the policy says resend)


@dataclass(frozen=True)
class DispatchResult:
    reaped: ReapResult
    claimed: int


# PostgreSQL: the row choice is an uncorrelated ARRAY(subquery), an InitPlan that runs exactly once, and the
# UPDATE reaches the chosen rows by their physical address (ctid) in one TID scan, in page order. Measured at
# 1M rows (bench/dispatch_scale.py, docs/benchmarks.md): the pk-index probe per row of ``id IN (CTE)`` cost
# about a fifth of the claim, and a CTE joined on ctid let the planner pick a hash join over every pending
# row on small tables. A ctid cannot move under us: the subquery locked the row FOR UPDATE in this statement.
_CLAIM_POSTGRESQL = text(
    """
    UPDATE deliveries SET status = :queued, claim_token = :token, lease_until = :lease_until
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM deliveries
        WHERE status = :pending AND due_at <= :now
        ORDER BY due_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ))
    AND status = :pending
    RETURNING id
    """
)


def claim_due(session: Session, *, limit: int, lease_seconds: int, now: datetime | None = None) -> Claim:
    now = now or clock.db_now(session)
    token = secrets.token_hex(8)  # short: the sender appends a per-attempt suffix
    lease_until = now + timedelta(seconds=lease_seconds)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _CLAIM_POSTGRESQL,
            {
                "queued": DeliveryStatus.queued.value,
                "pending": DeliveryStatus.pending.value,
                "token": token,
                "lease_until": lease_until,
                "now": now,
                "limit": limit,
            },
        )
        return Claim(token=token, delivery_ids=sorted(rows.scalars()))
    # Elsewhere (SQLite, whose write lock serialises claims) the row choice is a CTE, evaluated once. As an
    # ``IN (subquery)`` a planner may rescan the LIMIT subquery and claim more rows than the limit.
    due = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.pending, Delivery.due_at <= now)
        .order_by(Delivery.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    rows = session.execute(
        update(Delivery)
        .where(Delivery.id == due.c.id, Delivery.status == DeliveryStatus.pending)
        .values(status=DeliveryStatus.queued, claim_token=token, lease_until=lease_until)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    return Claim(token=token, delivery_ids=sorted(rows.scalars()))


def release(session: Session, token: str, ids: list[int]) -> int:
    """Give back claimed rows that never reached a worker."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.claim_token == token, Delivery.status == DeliveryStatus.queued)
        .values(status=DeliveryStatus.pending, claim_token=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def reap_expired(session: Session, *, policy: str, now: datetime | None = None) -> ReapResult:
    now = now or clock.db_now(session)
    returned = session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.queued, Delivery.lease_until < now)
        .values(status=DeliveryStatus.pending, claim_token=None, lease_until=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    # A lease that ran out while "sending" means the worker died between deciding to send and recording the
    # outcome: the server may have the message. Hold it for a person unless the operator chose resend.
    died = session.scalars(
        select(Delivery.id).where(Delivery.status == DeliveryStatus.sending, Delivery.lease_until < now)
    ).all()
    if died:
        target = DeliveryStatus.pending if policy == "resend" else DeliveryStatus.ambiguous
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(died), Delivery.status == DeliveryStatus.sending)
            .values(status=target, claim_token=None, lease_until=None, last_error="worker lost mid-send")
            .execution_options(synchronize_session=False)
        )
        for delivery_id in died:
            events.record(session, "ambiguous", delivery_id=delivery_id, cause="lease expired while sending")
    return ReapResult(returned=returned or 0, ambiguous=len(died))


def batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def dispatch_once(
    enqueue: Callable[[str, list[int]], None],
    *,
    factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> DispatchResult:
    """One tick: reap, claim, commit, then hand batches to the broker (never before the claim commits)."""
    settings = settings or get_settings()
    with transaction(factory) as session:
        reaped = reap_expired(session, policy=settings.ambiguous_policy)
    with transaction(factory) as session:
        # Backpressure: claims still waiting for a worker count against this tick's limit, so a slow worker
        # pool is never buried under claims whose leases would run out in the queue.
        outstanding = session.scalar(
            select(func.count()).where(Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.sending]))
        )
        room = settings.claim_limit - (outstanding or 0)
        if room <= 0:
            return DispatchResult(reaped=reaped, claimed=0)
        claim = claim_due(session, limit=room, lease_seconds=settings.lease_seconds)
    handed: list[int] = []
    try:
        for batch in batches(claim.delivery_ids, settings.batch_size):
            enqueue(claim.token, batch)
            handed.extend(batch)
    except Exception:
        # Broker unreachable: return what was not handed over now rather than after the lease expires.
        with transaction(factory) as session:
            release(session, claim.token, claim.delivery_ids[len(handed) :])
        raise
    return DispatchResult(reaped=reaped, claimed=len(claim.delivery_ids))
