"""Claim due deliveries for workers, and take back claims whose lease ran out.

A claim is one conditional UPDATE: only rows still ``pending`` and due move to ``queued``, stamped with a
claim token and a lease. On PostgreSQL the inner SELECT uses ``FOR UPDATE SKIP LOCKED`` so concurrent
dispatchers take disjoint rows without waiting on each other; on SQLite the write lock serialises them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import Settings, get_settings, parse_rate
from nurture.core.db import among, transaction
from nurture.delivery import frequency_cap, leases, receipts
from nurture.models import Delivery, DeliveryStatus, events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapResult:
    returned: int  # queued rows whose task never ran: back to pending
    settled: leases.Settled  # rows whose worker died mid-send: accepted, unknown (one per attempt), returned

    @property
    def ambiguous(self) -> int:
        """Deliveries whose outcome a crash made unknown (resent, or held under ``hold``)."""
        return len(self.settled.unknown)


@dataclass(frozen=True)
class DispatchResult:
    reaped: ReapResult
    claimed: int
    full: bool = False  # the tick claimed all the room it had: more may be due than it could take


Enqueue = Callable[[str, list[int]], None]
# Rows per claim transaction. A tick with room for 10,000 claims them in slices, each handed to the broker as
# soon as it commits: the first batch is sending after one slice's claim (about 80 ms on this machine's
# benchmark) instead of the whole room's (about 0.4 s), and no UPDATE holds 10,000 row locks.
CLAIM_SLICE = 2_000


def claim_due(
    session: Session, *, limit: int, lease_seconds: int, now: datetime | None = None
) -> leases.Claim:
    return leases.DELIVERIES.claim(session, limit=limit, lease_seconds=lease_seconds, now=now)


def claim_spaced(session: Session, settings: Settings, room: int) -> leases.Claim:
    """Claim up to ``room`` due rows, after the frequency cap moved those that must wait
    (nurture.delivery.frequency_cap);
    with the cap off, the plain claim."""
    if settings.mail.frequency_cap_hours <= 0:
        return claim_due(session, limit=room, lease_seconds=settings.broker.lease_seconds)
    now = clock.db_now(session)
    passing = frequency_cap.space_out(
        session, cap_hours=settings.mail.frequency_cap_hours, limit=room, now=now
    )
    return leases.DELIVERIES.claim(
        session,
        limit=max(1, len(passing)),
        lease_seconds=settings.broker.lease_seconds,
        only=(among(session, Delivery.id, passing or [0]),),
        now=now,
    )


def release(session: Session, token: str, ids: list[int]) -> int:
    """Give back claimed rows that never reached a worker."""
    return leases.DELIVERIES.release(session, token, ids)


def reap_expired(session: Session, *, policy: str, now: datetime | None = None) -> ReapResult:
    reaped = leases.DELIVERIES.reap(session, policy=policy, now=now)
    settled = reaped.settled
    resolution = "resent" if settled.resent else "held"
    # Rows with a receipt were accepted: the `sent` event their group would have written, receipts done.
    for delivery_id in settled.accepted:
        message_id = settled.receipts[delivery_id]["message_id"]
        events.record(session, "sent", delivery_id=delivery_id, message_id=message_id)
    receipts.forget(session, settled.accepted)
    # The one delivery per dead worker whose fate is unknown: an event staff see (results, subscriber page,
    # /metrics), with how it was resolved.
    for delivery_id in settled.unknown:
        events.record(
            session, "ambiguous", delivery_id=delivery_id, cause="lease expired while sending",
            resolution=resolution,
        )  # fmt: skip
    if settled.unknown or settled.returned or settled.accepted:
        log.warning(
            "reaped a dead worker's sends: %d accepted, %d unknown (%s), %d returned unsent",
            len(settled.accepted), len(settled.unknown), resolution, len(settled.returned),
        )  # fmt: skip
    return ReapResult(returned=reaped.returned, settled=settled)


def batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def claim_room(settings: Settings, outstanding: int) -> int:
    """How many rows this tick may claim: the claim limit less what is still waiting for a worker, and with
    an SMTP rate limit no more than it lets out in half a lease (so no claim expires while it waits its turn
    in the queue)."""
    room = settings.broker.claim_limit - outstanding
    per_second = parse_rate(settings.mail.smtp_rate)
    if per_second is not None:
        room = min(room, int(per_second * settings.broker.lease_seconds / 2) - outstanding)
    return room


def refill_point(batch_count: int) -> int:
    """The batch after which the next tick should run when a claim used all its room: the middle one, so the
    queue is topped up while half the claim is still waiting and the workers never run dry between ticks."""
    return batch_count // 2


def dispatch_once(
    enqueue: Enqueue,
    *,
    factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
    refill_with: Enqueue | None = None,
) -> DispatchResult:
    """One tick: reap, claim, commit, then hand batches to the broker (never before the claim commits).

    A tick that used all its room (``claim_limit`` less what still waits) leaves due rows behind; without
    more, throughput would stop at ``claim_limit / dispatch_interval`` however fast the workers are. So when
    ``refill_with`` is given, the batch at :func:`refill_point` of the slice that fills the room (see
    ``CLAIM_SLICE``) is handed over through it instead: the worker that finishes that batch runs the next tick
    at once (nurture.tasks)."""
    settings = settings or get_settings()
    with transaction(factory) as session:
        reaped = reap_expired(session, policy=settings.mail.ambiguous_policy)
    with transaction(factory) as session:
        # Backpressure: claims still waiting for a worker count against this tick's limit, so a slow worker
        # pool is never buried under claims whose leases would run out in the queue.
        outstanding = session.scalar(
            select(func.count()).where(Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.sending]))
        )
    room = claim_room(settings, outstanding or 0)
    claimed = 0
    while claimed < room:
        wanted = min(CLAIM_SLICE, room - claimed)
        with transaction(factory) as session:
            claim = claim_spaced(session, settings, wanted)
        if not claim.ids:
            break
        claimed += len(claim.ids)
        # The slice that fills the room carries the refill: its middle batch runs the next tick.
        fills_room = claimed >= room and refill_with is not None
        _hand_over(enqueue, refill_with if fills_room else None, claim, settings.broker.batch_size, factory)
        if len(claim.ids) < wanted:
            break  # nothing more is due now (or the frequency cap moved the rest)
    return DispatchResult(reaped=reaped, claimed=claimed, full=room > 0 and claimed >= room)


def _hand_over(
    enqueue: Enqueue,
    refill_with: Enqueue | None,
    claim: leases.Claim,
    batch_size: int,
    factory: sessionmaker[Session] | None,
) -> None:
    """Hand a committed claim to the broker in batches, the middle one through ``refill_with`` if given."""
    chunks = batches(claim.ids, batch_size)
    refill_at = refill_point(len(chunks))
    handed: list[int] = []
    try:
        for index, batch in enumerate(chunks):
            hand = refill_with if refill_with is not None and index == refill_at else enqueue
            hand(claim.token, batch)
            handed.extend(batch)
    except Exception:
        # Broker unreachable: return what was not handed over now rather than after the lease expires.
        with transaction(factory) as session:
            release(session, claim.token, claim.ids[len(handed) :])
        raise
