"""Send claimed deliveries, exactly once each, and record what happened.

For every delivery: re-read it and check it should still go (the world may have changed since it was
claimed), render it, then in one short transaction re-check and move it ``queued -> sending``; only then talk
to SMTP, and record the outcome afterwards. Rendering happens before the final check so an unsubscribe that
lands while we render still wins. A worker that dies after "sending" leaves a row the reaper marks ambiguous
instead of sending blindly again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from nurture import clock, events
from nurture.catalog import window_of
from nurture.config import Settings
from nurture.db import transaction
from nurture.enrollment import cancel_open_deliveries
from nurture.mail.context import Recipient, step_message
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import AmbiguousFailure, PermanentFailure, TemporaryFailure, Transport
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

log = logging.getLogger(__name__)

HOLD = "held"  # not a skip: the enrollment or sequence is paused and the delivery waits for resume


@dataclass(frozen=True)
class Prepared:
    recipient: Recipient
    template: str
    sequence_name: str
    step_number: int
    step_count: int


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


class Sender:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        transport: Transport,
        templates: EmailTemplates,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.transport = transport
        self.templates = templates

    def send_batch(self, claim_token: str, delivery_ids: list[int]) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        for delivery_id in delivery_ids:
            outcomes[self.send_one(claim_token, delivery_id)] += 1
        return outcomes

    def send_one(self, claim_token: str, delivery_id: int) -> str:
        prepared_or_outcome = self._prepare(claim_token, delivery_id)
        if isinstance(prepared_or_outcome, str):
            return prepared_or_outcome
        prepared = prepared_or_outcome
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
        except Exception as exc:  # a template bug must not kill the batch; it is retried and recorded
            log.exception("rendering delivery %s failed", delivery_id)
            return self._after_temporary(
                claim_token, delivery_id, f"render failed: {exc}", from_status="queued"
            )

        outcome = self._begin_sending(claim_token, delivery_id)
        if outcome is not None:
            return outcome
        try:
            self.transport.send(self.settings.envelope_from, prepared.recipient.email, data)
        except TemporaryFailure as exc:
            return self._after_temporary(claim_token, delivery_id, str(exc), from_status="sending")
        except PermanentFailure as exc:
            return self._after_permanent(claim_token, delivery_id, str(exc))
        except AmbiguousFailure as exc:
            return self._after_ambiguous(claim_token, delivery_id, str(exc))
        return self._after_sent(claim_token, delivery_id, message_id)

    # --- phases -------------------------------------------------------------------------------------------

    def _prepare(self, claim_token: str, delivery_id: int) -> Prepared | str:
        with transaction(self.factory) as session:
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
            steps = enrollment.version.steps
            subscriber = delivery.subscriber
            return Prepared(
                recipient=Recipient(subscriber.email, subscriber.first_name, subscriber.public_id),
                template=delivery.step.template,
                sequence_name=enrollment.sequence.name,
                step_number=delivery.step.position,
                step_count=len(steps),
            )

    def _skip(self, session: Session, delivery: Delivery, reason: str) -> str:
        status = DeliveryStatus.held if reason == HOLD else DeliveryStatus.skipped
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status.in_([DeliveryStatus.queued]))
            .values(
                status=status,
                skip_reason=None if reason == HOLD else reason,
                claim_token=None,
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        if reason != HOLD:
            events.record(
                session,
                "skipped",
                subscriber_id=delivery.subscriber_id,
                delivery_id=delivery.id,
                reason=reason,
            )
        return HOLD if reason == HOLD else f"skipped:{reason}"

    def _begin_sending(self, claim_token: str, delivery_id: int) -> str | None:
        with transaction(self.factory) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return "gone"
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
                    attempts=Delivery.attempts + 1,
                    lease_until=clock.now() + timedelta(seconds=self.settings.lease_seconds),
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

    def _after_sent(self, claim_token: str, delivery_id: int, message_id: str) -> str:
        with transaction(self.factory) as session:
            now = clock.now()
            self._finish(
                session,
                claim_token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.sent,
                sent_at=now,
                message_id=message_id,
                last_error=None,
            )
            events.record(session, "sent", delivery_id=delivery_id, message_id=message_id)
        return "sent"

    def _after_temporary(self, claim_token: str, delivery_id: int, error: str, *, from_status: str) -> str:
        with transaction(self.factory) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return "gone"
            attempts = delivery.attempts + (1 if from_status == DeliveryStatus.queued else 0)
            if attempts >= self.settings.max_attempts:
                self._finish(
                    session,
                    claim_token,
                    delivery_id,
                    from_status,
                    status=DeliveryStatus.failed,
                    attempts=attempts,
                    last_error=error,
                    claim_token=None,
                )
                events.record(session, "failed", delivery_id=delivery_id, error=error, attempts=attempts)
                return "failed"
            retry_at = self._retry_time(session, delivery, attempts)
            self._finish(
                session,
                claim_token,
                delivery_id,
                from_status,
                status=DeliveryStatus.pending,
                attempts=attempts,
                due_at=retry_at,
                last_error=error,
                claim_token=None,
            )
            events.record(
                session,
                "retry",
                delivery_id=delivery_id,
                error=error,
                attempt=attempts,
                retry_at=retry_at.isoformat(),
            )
        return "retry"

    def _retry_time(self, session: Session, delivery: Delivery, attempts: int) -> datetime:
        backoff = min(self.settings.retry_base_seconds * 2 ** (attempts - 1), self.settings.retry_cap_seconds)
        enrollment = delivery.enrollment
        subscriber = delivery.subscriber
        tz = resolve_zone(subscriber.timezone, enrollment.version.timezone)
        # A retry still respects the send window: a 4xx at 11:29 must not land at 23:00 local.
        return next_open(clock.now() + timedelta(seconds=backoff), window_of(enrollment.version), tz)

    def _after_permanent(self, claim_token: str, delivery_id: int, error: str) -> str:
        with transaction(self.factory) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return "gone"
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
        return "failed"

    def _after_ambiguous(self, claim_token: str, delivery_id: int, error: str) -> str:
        resend = self.settings.ambiguous_policy == "resend"
        with transaction(self.factory) as session:
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
