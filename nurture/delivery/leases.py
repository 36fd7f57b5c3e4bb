"""Claims and leases on work tables: one set of rules for sequence deliveries, outbox messages and webhooks.

Every table moves rows ``pending -> queued -> sending -> (sent | failed | pending again)`` (webhooks skip
``sending``: an HTTP POST may simply be repeated). A claim marks a batch ``queued`` under a random token and a
lease; every later step changes a row only while it still carries that token, so a reaper's decision and a
slow worker's late write can never both win. All times come from the database's clock (``clock.db_now``), so
machines whose clocks disagree still agree on when a lease ran out.

One :class:`WorkTable` per table holds the rules (claim, renew, begin, finish, release, reap); a fix to one
table's rules is a fix to every table's.

What a reaper knows about a worker that died while ``sending`` (docs/reliability.md, "Crashes"): a worker
sends the rows it marked under one attempt token one at a time, in id order, and records each accepted
message (a *receipt*, nurture.delivery.receipts) in its own commit before the next one starts. So of
a dead attempt's rows, those with a receipt were accepted, the first one without a receipt is the only one
whose fate is unknown, and every later one was never handed over.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, func, literal_column, select, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.config import Settings
from nurture.core.db import InParameter
from nurture.delivery import receipts
from nurture.models import Delivery, OutboxMessage, WebhookDelivery

# The statuses are the same strings in every table (DeliveryStatus, OutboxStatus, WebhookDeliveryStatus).
PENDING, QUEUED, SENDING, AMBIGUOUS = "pending", "queued", "sending", "ambiguous"
LOST_MID_SEND = "worker lost mid-send"

Leased = type[Delivery] | type[OutboxMessage] | type[WebhookDelivery]
# Lease ends and deferrals need the database's clock to the second, not a query each: claims and the reaper,
# which compare against due times and lease ends, still read it exactly (clock.db_now).
_LEASE_CLOCK = clock.DatabaseClock()
# Receipts of accepted messages among the given rows: id -> the values that record the row as sent.
Receipts = Callable[[Session, list[int]], dict[int, dict[str, Any]]]


def new_token(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def attempt_token(claim_token: str) -> str:
    """A token unique to one attempt at a claimed batch: a commit whose reply was lost is recognised by its
    retry, and a redelivered copy of the task, holding only the claim token, cannot take the rows."""
    return f"{claim_token}.{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Claim:
    token: str
    ids: list[int]


@dataclass(frozen=True)
class Settled:
    """What the reaper decided for rows whose lease ran out while ``sending``."""

    accepted: list[int] = field(default_factory=list)  # a receipt says the server took it: recorded as sent
    unknown: list[int] = field(default_factory=list)  # on the wire when the worker died: at most one a worker
    returned: list[int] = field(default_factory=list)  # never handed over: pending again, nothing counted
    policy: str = "resend"
    receipts: dict[int, dict[str, Any]] = field(default_factory=dict)  # of the accepted ones

    @property
    def resent(self) -> bool:
        return self.policy == "resend"


@dataclass(frozen=True)
class Reaped:
    returned: int  # queued rows whose task never ran: back to pending
    settled: Settled


@dataclass(frozen=True)
class WorkTable:
    model: Leased
    receipts: Receipts | None = None  # None: the table records each outcome on the row itself

    # --- claims --------------------------------------------------------------------------------------

    def claim(
        self,
        session: Session,
        *,
        limit: int,
        lease_seconds: float,
        only: tuple[ColumnElement[bool], ...] = (),
        now: datetime | None = None,
    ) -> Claim:
        """Mark up to ``limit`` due rows ``queued`` under a new token (among those matching ``only``); their
        ids in id order. The ``status = 'pending'`` re-check in the UPDATE makes a claim exclusive."""
        model = self.model
        now = now or clock.db_now(session)
        token = new_token()
        choice = (model.status == PENDING, model.due_at <= now, *only)
        claim = update(model).values(
            status=QUEUED, claim_token=token, lease_until=now + timedelta(seconds=lease_seconds)
        )
        if session.get_bind().dialect.name == "postgresql":
            # The row choice is an uncorrelated ARRAY(subquery): an InitPlan, run exactly once (so never
            # more than ``limit`` rows), and the UPDATE reaches the chosen rows by physical address (ctid) in
            # one TID scan instead of a primary-key probe each: about half the cost at 1M rows
            # (docs/benchmarks.md). A ctid cannot move under us: the subquery locked the row FOR UPDATE.
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
        return Claim(token, sorted(rows.scalars()))

    def still_claimed(self, ids: list[int], token: str) -> tuple[ColumnElement[bool], ...]:
        """The WHERE clause of every write that may only happen while rows are queued under this claim."""
        return (self.model.id.in_(ids), self.model.claim_token == token, self.model.status == QUEUED)

    def lease_half_gone(self, session: Session, lease_until: datetime, lease_seconds: float) -> bool:
        """Whether a lease ending at ``lease_until`` has less than half of ``lease_seconds`` left: when
        :meth:`renew` would rewrite it (a caller that read the lease already can skip the statement)."""
        return lease_until < _LEASE_CLOCK.now(session) + timedelta(seconds=lease_seconds / 2)

    def renew(self, session: Session, token: str, ids: list[int], *, lease_seconds: float) -> None:
        """Extend the lease of claimed rows a worker starts on, only where less than half of it is left:
        rewriting a row costs PostgreSQL a new version in every index, and a task usually starts seconds
        after its claim."""
        now = _LEASE_CLOCK.now(session)
        session.execute(
            update(self.model)
            .where(
                *self.still_claimed(ids, token),
                self.model.lease_until < now + timedelta(seconds=lease_seconds / 2),
            )
            .values(lease_until=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )

    # --- sending ---------------------------------------------------------------------------------------

    def begin(
        self, session: Session, token: str, ids: list[int], *, attempt: str, lease_seconds: float
    ) -> set[int]:
        """``queued -> sending`` under the attempt token, counting an attempt; the ids that moved."""
        lease_until = _LEASE_CLOCK.now(session) + timedelta(seconds=lease_seconds)
        params = {"ids": ids, "token": token, "attempt": attempt, "lease_until": lease_until}
        return set(session.connection().execute(self._begin_statement, params).scalars())

    @functools.cached_property
    def _begin_statement(self) -> Any:
        # Built once per table: it runs for every group of emails, and building it was a tenth of the
        # sender's database work.
        model = self.model
        return (
            update(model)
            .where(
                InParameter(model.id, "ids"),
                model.claim_token == bindparam("token"),
                model.status == QUEUED,
            )
            .values(
                status=SENDING,
                claim_token=bindparam("attempt"),
                attempts=model.attempts + 1,
                lease_until=bindparam("lease_until", type_=model.lease_until.type),
            )
            .returning(model.id)
            .execution_options(synchronize_session=False)
        )

    def finish(
        self, session: Session, token: str, ids: list[int], from_status: str, /, **values: object
    ) -> set[int]:
        """Record an outcome on rows still ours (same token, expected status); the ids recorded. A reaper
        may have marked a row ambiguous while we were slow: what the worker now knows for certain wins."""
        allowed = [from_status, AMBIGUOUS] if from_status == SENDING else [from_status]
        done = session.scalars(
            update(self.model)
            .where(self.model.id.in_(ids), self.model.claim_token == token, self.model.status.in_(allowed))
            .values(lease_until=None, **values)
            .returning(self.model.id)
            .execution_options(synchronize_session=False)
        )
        return set(done)

    def release(
        self,
        session: Session,
        token: str,
        ids: list[int],
        *,
        after_seconds: float | None = None,
        from_status: str = QUEUED,
        error: str | None = None,
    ) -> int:
        """Give rows back unsent, nothing counted against them: at once, or due again in ``after_seconds``
        (an unreachable server, an open breaker). From ``sending``, the attempt counted by :meth:`begin` is
        taken back."""
        values: dict[str, object] = {"status": PENDING, "claim_token": None, "lease_until": None}
        if after_seconds is not None:
            values["due_at"] = _LEASE_CLOCK.now(session) + timedelta(seconds=after_seconds)
        if from_status == SENDING:
            values["attempts"] = self.model.attempts - 1
        if error is not None:
            values["last_error"] = error
        result = session.execute(
            update(self.model)
            .where(self.model.id.in_(ids), self.model.claim_token == token, self.model.status == from_status)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount or 0

    # --- the reaper --------------------------------------------------------------------------------------

    def reap(self, session: Session, *, policy: str, now: datetime | None = None) -> Reaped:
        now = now or clock.db_now(session)
        return Reaped(self.return_expired_claims(session, now), self.settle_lost_sends(session, now, policy))

    def return_expired_claims(self, session: Session, now: datetime) -> int:
        """Queued rows whose worker never started them go back to pending: nothing was sent or doubles."""
        model = self.model
        result = session.execute(
            update(model)
            .where(model.status == QUEUED, model.lease_until < now)
            .values(status=PENDING, claim_token=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount or 0

    def settle_lost_sends(self, session: Session, now: datetime, policy: str) -> Settled:
        """Rows whose lease ran out while ``sending``: their worker died. Receipts say which were accepted;
        of the rest of each attempt, the first in id order was on the wire (resent with the same Message-ID
        under ``resend``, held as ``ambiguous`` for a person under ``hold``) and the others go back to
        pending, never having been handed over."""
        model = self.model
        dead = session.execute(
            select(model.id, model.claim_token)
            .where(model.status == SENDING, model.lease_until < now)
            .order_by(model.claim_token, model.id)
            # Not SKIP LOCKED: a second reaper must not see half of an attempt and take its middle row for
            # the first. Locks are taken in this order, so two reapers queue up rather than deadlock.
            .with_for_update()
        ).all()
        if not dead:
            return Settled(policy=policy)
        receipts = self.receipts(session, [row.id for row in dead]) if self.receipts else {}
        accepted: list[int] = []
        unknown: list[int] = []
        returned: list[int] = []
        first_open: set[str | None] = set()
        for row in dead:
            if row.id in receipts:
                accepted.append(row.id)
            elif row.claim_token not in first_open:
                first_open.add(row.claim_token)
                unknown.append(row.id)
            else:
                returned.append(row.id)
        for row_id in accepted:
            self._settle(session, [row_id], status="sent", last_error=None, **receipts[row_id])
        self._settle(
            session,
            unknown,
            status=PENDING if policy == "resend" else AMBIGUOUS,
            last_error=LOST_MID_SEND,
        )
        self._settle(session, returned, status=PENDING, attempts=model.attempts - 1)
        return Settled(accepted, unknown, returned, policy, receipts)

    def _settle(self, session: Session, ids: list[int], **values: object) -> None:
        if ids:
            session.execute(
                update(self.model)
                .where(self.model.id.in_(ids), self.model.status == SENDING)
                .values(claim_token=None, lease_until=None, **values)
                .execution_options(synchronize_session=False)
            )


DELIVERIES = WorkTable(Delivery, receipts=receipts.accepted)
OUTBOX = WorkTable(OutboxMessage)  # one message at a time: its outcome is written on the row before the next
WEBHOOKS = WorkTable(WebhookDelivery)


def retry_backoff(settings: Settings, attempts: int) -> timedelta:
    """Exponential backoff after a temporary failure: base, 2×base, 4×base, ... capped."""
    seconds = settings.mail.retry_base_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.mail.retry_cap_seconds))
