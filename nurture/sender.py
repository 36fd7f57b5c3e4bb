"""Send claimed deliveries, exactly once each, and record what happened.

For every delivery: re-read it and check it should still go (the world may have changed since it was
claimed), render it, then in one short transaction re-check and move it ``queued -> sending``; only then talk
to SMTP, and record the outcome afterwards. Rendering happens before the final check so an unsubscribe that
lands while we render still wins. A worker that dies after "sending" leaves a row the reaper marks ambiguous
instead of sending blindly again. Every database step retries on a lost connection; each is a conditional
UPDATE, so a repeat changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from nurture import clock, events, metrics
from nurture.breaker import Breaker
from nurture.catalog import window_of
from nurture.config import Settings
from nurture.db import retrying
from nurture.enrollment import cancel_open_deliveries
from nurture.mail.context import Recipient, step_message
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import (
    AmbiguousFailure,
    ConnectFailure,
    PermanentFailure,
    TemporaryFailure,
    Transport,
)
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    SequenceStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from nurture.schedule import next_open, resolve_zone
from nurture.throttle import RateLimiter, Unlimited

log = logging.getLogger(__name__)

HOLD = "held"  # not a skip: the enrollment or sequence is paused and the delivery waits for resume
DEFERRED = "deferred"  # handed back unsent because the SMTP server is unreachable or the breaker is open


class _Closed:
    def record(self, ok: bool) -> None:
        pass

    def open_for(self) -> float:
        return 0.0


@dataclass(frozen=True)
class Prepared:
    recipient: Recipient
    subscriber_id: int
    step_key: str
    template: str
    sequence_name: str
    step_number: int
    step_count: int


class _StopBatch(Exception):
    """Sending cannot go on right now (server unreachable, breaker open): hand the rest back unsent."""

    def __init__(self, retry_in: float) -> None:
        self.retry_in = retry_in


def skip_reason(session: Session, delivery: Delivery, *, lock: bool = False) -> str | None:
    """Why this delivery must not go now, or None. Reasons are stable values: they are counted and shown."""
    query = select(Subscriber).where(Subscriber.id == delivery.subscriber_id)
    if lock:
        # Share-lock the subscriber so an unsubscribe cannot commit between this check and "sending".
        query = query.with_for_update(read=True)
    subscriber = session.scalar(query.execution_options(populate_existing=True))
    if subscriber is None:
        return "erased"
    if subscriber.status == SubscriberStatus.unsubscribed:
        return "unsubscribed"
    if subscriber.status != SubscriberStatus.active:
        return "not-confirmed"
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is not None:
        return "suppressed"
    enrollment = session.get(Enrollment, delivery.enrollment_id, populate_existing=True)
    assert enrollment is not None  # deliveries cascade with their enrollment
    if enrollment.status in (EnrollmentStatus.cancelled, EnrollmentStatus.completed):
        return "enrollment-ended"
    if enrollment.status == EnrollmentStatus.paused or enrollment.sequence.status == SequenceStatus.paused:
        return HOLD
    if enrollment.sequence.status == SequenceStatus.archived:
        return "sequence-archived"
    return None


def log_transition(delivery_id: int, outcome: str, **fields: object) -> None:
    """One structured line per state change; ids only, never addresses, at info level."""
    extra = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    log.info(
        "delivery=%s outcome=%s %s", delivery_id, outcome, extra, extra={"delivery_id": delivery_id, **fields}
    )


class Sender:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        transport: Transport,
        templates: EmailTemplates,
        *,
        limiter: RateLimiter | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.transport = transport
        self.templates = templates
        self.limiter = limiter or Unlimited()
        self.breaker = breaker or _Closed()

    def send_batch(self, claim_token: str, delivery_ids: list[int]) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        retrying(lambda s: self._renew_lease(s, claim_token, delivery_ids), self.factory)
        for position, delivery_id in enumerate(delivery_ids):
            try:
                outcomes[metrics.timed_send(self.send_one, claim_token, delivery_id)] += 1
            except _StopBatch as stop:
                rest = delivery_ids[position:]
                self._defer(claim_token, rest, stop.retry_in)
                outcomes[DEFERRED] += len(rest)
                break
            except Exception:  # one broken row must not strand the rest of the batch; the reaper has it
                log.exception("delivery=%s outcome=error", delivery_id)
                outcomes["error"] += 1
        return outcomes

    def send_one(self, claim_token: str, delivery_id: int) -> str:
        prepared = retrying(lambda s: self._prepare(s, claim_token, delivery_id), self.factory)
        if isinstance(prepared, str):
            return prepared
        try:
            _rendered, data, message_id = step_message(
                self.settings,
                self.templates,
                prepared.recipient,
                template=prepared.template,
                sequence_name=prepared.sequence_name,
                step_number=prepared.step_number,
                step_count=prepared.step_count,
                delivery_id=delivery_id,
                date=clock.now(),
            )
        except (
            Exception
        ) as exc:  # a template that cannot render for this subscriber will not render next time
            log.exception("delivery=%s rendering failed", delivery_id)
            return self._record_failure(
                claim_token, delivery_id, DeliveryStatus.queued, f"render failed: {exc}"
            )

        if (wait := self.breaker.open_for()) > 0:
            raise _StopBatch(wait)
        metrics.observe_rate_limit_wait(self.limiter.acquire())
        # From here the row carries a token unique to this attempt: if the commit below succeeds but its reply
        # is lost with the connection, the retry recognises its own change instead of giving the row up; a
        # redelivered copy of this task, holding only the claim token, cannot take the row.
        sending_token = f"{claim_token}.{secrets.token_hex(4)}"
        outcome = retrying(
            lambda s: self._begin_sending(s, claim_token, sending_token, delivery_id), self.factory
        )
        if outcome is not None:
            return outcome
        claim_token = sending_token
        try:
            self.transport.send(self.settings.envelope_from, prepared.recipient.email, data)
        except ConnectFailure as exc:
            self.breaker.record(ok=False)
            # Nothing was handed over: back to the queue without counting an attempt against the message.
            error = str(exc)
            retrying(lambda s: self._undo_sending(s, claim_token, delivery_id, error), self.factory)
            raise _StopBatch(self.settings.retry_base_seconds) from exc
        except TemporaryFailure as exc:
            self.breaker.record(ok=False)
            return self._after_temporary(claim_token, delivery_id, str(exc), prepared)
        except PermanentFailure as exc:
            self.breaker.record(ok=False)
            return self._after_permanent(claim_token, delivery_id, str(exc))
        except AmbiguousFailure as exc:
            self.breaker.record(ok=False)
            return self._after_ambiguous(claim_token, delivery_id, str(exc))
        self.breaker.record(ok=True)
        retrying(lambda s: self._after_sent(s, claim_token, delivery_id, message_id), self.factory)
        log_transition(delivery_id, "sent", subscriber=prepared.subscriber_id, step=prepared.step_key)
        return "sent"

    # --- phases -------------------------------------------------------------------------------------------

    def _renew_lease(self, session: Session, claim_token: str, delivery_ids: list[int]) -> None:
        """The claim's lease covered the wait in the queue; a task that starts work renews it."""
        session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(delivery_ids),
                Delivery.claim_token == claim_token,
                Delivery.status == DeliveryStatus.queued,
            )
            .values(lease_until=clock.db_now(session) + timedelta(seconds=self.settings.lease_seconds))
            .execution_options(synchronize_session=False)
        )

    def _prepare(self, session: Session, claim_token: str, delivery_id: int) -> Prepared | str:
        delivery = session.scalar(
            select(Delivery)
            .where(Delivery.id == delivery_id)
            .options(joinedload(Delivery.step), joinedload(Delivery.subscriber))
        )
        if delivery is None:
            return "gone"
        if delivery.status != DeliveryStatus.queued or delivery.claim_token != claim_token:
            return "not-claimed"  # reaped and re-claimed, or already handled by a redelivered task
        reason = skip_reason(session, delivery)
        if reason is not None:
            return self._skip(session, delivery, reason)
        enrollment = delivery.enrollment
        subscriber = delivery.subscriber
        return Prepared(
            recipient=Recipient(subscriber.email, subscriber.first_name, subscriber.public_id),
            subscriber_id=subscriber.id,
            step_key=delivery.step.key,
            template=delivery.step.template,
            sequence_name=enrollment.sequence.name,
            step_number=delivery.step.position,
            step_count=len(enrollment.version.steps),
        )

    def _skip(self, session: Session, delivery: Delivery, reason: str) -> str:
        held = reason == HOLD
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status == DeliveryStatus.queued)
            .values(
                status=DeliveryStatus.held if held else DeliveryStatus.skipped,
                skip_reason=None if held else reason,
                claim_token=None,
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        outcome = HOLD if held else f"skipped:{reason}"
        if not held:
            events.record(
                session,
                "skipped",
                subscriber_id=delivery.subscriber_id,
                delivery_id=delivery.id,
                reason=reason,
            )
        log_transition(delivery.id, outcome, subscriber=delivery.subscriber_id)
        return outcome

    def _begin_sending(
        self, session: Session, claim_token: str, sending_token: str, delivery_id: int
    ) -> str | None:
        delivery = session.get(Delivery, delivery_id, populate_existing=True)
        if delivery is None:
            return "gone"
        if delivery.status == DeliveryStatus.sending and delivery.claim_token == sending_token:
            return None  # our own earlier commit, whose acknowledgement was lost
        reason = skip_reason(session, delivery, lock=True)
        if reason is not None:
            if delivery.status == DeliveryStatus.queued and delivery.claim_token == claim_token:
                return self._skip(session, delivery, reason)
            return "not-claimed"
        moved = session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.status == DeliveryStatus.queued,
                Delivery.claim_token == claim_token,
            )
            .values(
                status=DeliveryStatus.sending,
                claim_token=sending_token,
                attempts=Delivery.attempts + 1,
                lease_until=clock.db_now(session) + timedelta(seconds=self.settings.lease_seconds),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        return None if moved == 1 else "not-claimed"

    def _finish(
        self, session: Session, token: str, delivery_id: int, from_status: str, /, **values: object
    ) -> bool:
        """Record an outcome, only while the row is still ours (same claim, expected status)."""
        # A reaper may have marked the row ambiguous while we were slow; what we now know for certain wins.
        allowed = [from_status]
        if from_status == DeliveryStatus.sending:
            allowed.append(DeliveryStatus.ambiguous)
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.claim_token == token, Delivery.status.in_(allowed))
            .values(lease_until=None, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def _after_sent(self, session: Session, claim_token: str, delivery_id: int, message_id: str) -> None:
        recorded = self._finish(
            session,
            claim_token,
            delivery_id,
            DeliveryStatus.sending,
            status=DeliveryStatus.sent,
            sent_at=clock.now(),
            message_id=message_id,
            last_error=None,
        )
        if recorded:
            events.record(session, "sent", delivery_id=delivery_id, message_id=message_id)

    def _undo_sending(self, session: Session, claim_token: str, delivery_id: int, error: str) -> None:
        self._finish(
            session,
            claim_token,
            delivery_id,
            DeliveryStatus.sending,
            status=DeliveryStatus.pending,
            attempts=Delivery.attempts - 1,
            due_at=clock.db_now(session) + timedelta(seconds=self.settings.retry_base_seconds),
            last_error=error,
            claim_token=None,
        )

    def _defer(self, claim_token: str, delivery_ids: list[int], retry_in: float) -> None:
        """Hand claimed rows back unsent, due again in ``retry_in`` seconds (nothing counted against them)."""

        def work(session: Session) -> None:
            session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_(delivery_ids),
                    Delivery.claim_token == claim_token,
                    Delivery.status == DeliveryStatus.queued,
                )
                .values(
                    status=DeliveryStatus.pending,
                    claim_token=None,
                    lease_until=None,
                    due_at=clock.db_now(session) + timedelta(seconds=retry_in),
                )
                .execution_options(synchronize_session=False)
            )

        retrying(work, self.factory)
        log.warning(
            "deferred %d deliveries for %.0fs: SMTP unreachable or breaker open", len(delivery_ids), retry_in
        )

    def _record_failure(self, claim_token: str, delivery_id: int, from_status: str, error: str) -> str:
        def work(session: Session) -> None:
            if self._finish(
                session,
                claim_token,
                delivery_id,
                from_status,
                status=DeliveryStatus.failed,
                attempts=Delivery.attempts + (1 if from_status == DeliveryStatus.queued else 0),
                last_error=error,
                claim_token=None,
            ):
                events.record(session, "failed", delivery_id=delivery_id, error=error)

        retrying(work, self.factory)
        log_transition(delivery_id, "failed", error=error.split(":", 1)[0])
        return "failed"

    def _after_temporary(self, claim_token: str, delivery_id: int, error: str, prepared: Prepared) -> str:
        def work(session: Session) -> tuple[str, int]:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return "gone", 0
            if delivery.attempts >= self.settings.max_attempts:
                return "exhausted", delivery.attempts
            retry_at = self._retry_time(session, delivery)
            recorded = self._finish(
                session,
                claim_token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.pending,
                due_at=retry_at,
                last_error=error,
                claim_token=None,
            )
            if recorded:
                events.record(
                    session,
                    "retry",
                    delivery_id=delivery_id,
                    error=error,
                    attempt=delivery.attempts,
                    retry_at=retry_at.isoformat(),
                )
            return "retry", delivery.attempts

        outcome, attempts = retrying(work, self.factory)
        if outcome == "exhausted":
            return self._record_failure(claim_token, delivery_id, DeliveryStatus.sending, f"gave up: {error}")
        log_transition(delivery_id, outcome, subscriber=prepared.subscriber_id, attempt=attempts)
        return outcome

    def _retry_time(self, session: Session, delivery: Delivery) -> datetime:
        backoff = min(
            self.settings.retry_base_seconds * 2 ** (delivery.attempts - 1), self.settings.retry_cap_seconds
        )
        enrollment = delivery.enrollment
        tz = resolve_zone(delivery.subscriber.timezone, enrollment.version.timezone)
        # A retry still respects the send window: a 4xx at 11:29 must not land at 23:00 local.
        return next_open(
            clock.db_now(session) + timedelta(seconds=backoff), window_of(enrollment.version), tz
        )

    def _after_permanent(self, claim_token: str, delivery_id: int, error: str) -> str:
        def work(session: Session) -> None:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return
            self._finish(
                session,
                claim_token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.failed,
                last_error=error,
                claim_token=None,
            )
            suppress(session, delivery.subscriber.email, "hard-bounce", error)
            cancel_open_deliveries(session, delivery.subscriber_id, "suppressed")
            events.record(
                session, "bounced", subscriber_id=delivery.subscriber_id, delivery_id=delivery_id, error=error
            )

        retrying(work, self.factory)
        log_transition(delivery_id, "bounced", error=error.split(":", 1)[0])
        return "failed"

    def _after_ambiguous(self, claim_token: str, delivery_id: int, error: str) -> str:
        resend = self.settings.ambiguous_policy == "resend"

        def work(session: Session) -> None:
            self._finish(
                session,
                claim_token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.pending if resend else DeliveryStatus.ambiguous,
                last_error=error,
                claim_token=None,
            )
            events.record(session, "ambiguous", delivery_id=delivery_id, error=error, resend=resend)

        retrying(work, self.factory)
        log_transition(delivery_id, "ambiguous", resend=resend)
        return "ambiguous"


def suppress(session: Session, email: str, reason: str, detail: str | None = None) -> None:
    """Add to the suppression list once; a concurrent insert of the same address is not an error."""
    if session.scalar(select(Suppression.id).where(Suppression.email == email)) is not None:
        return
    try:
        with session.begin_nested():
            session.add(Suppression(email=email, reason=reason, detail=detail))
    except IntegrityError:
        pass
