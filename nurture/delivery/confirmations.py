"""Transactional email (the double opt-in confirmation) through an outbox table.

The web request never talks to SMTP: it adds an ``outbox_messages`` row in the same transaction as the signup,
so the email exists exactly when the signup does. The ``drain_outbox`` Celery task (on the beat, every
``NURTURE_DISPATCH_INTERVAL`` seconds) then follows the rules deliveries follow:

1. reap: claims whose lease ran out go back to ``pending``; a message that died mid-send is ``ambiguous``
   (held, or resent under ``NURTURE_AMBIGUOUS_POLICY=resend``), never blindly resent;
2. claim: one conditional UPDATE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so any number of beats and
   workers can drain at once without sending a message twice;
3. per message: re-check it should still go, render, move ``queued -> sending`` only while the claim is
   ours, send through the worker's transport, record ``sent`` / retry with backoff / ``failed``.

Confirmations are few and wanted now, so a tick claims and sends them itself; no send window applies.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nurture.core import clock, tokens
from nurture.core.db import transaction
from nurture.delivery import leases
from nurture.delivery.mailer import Mailer
from nurture.mail.compose import Envelope, compose, confirmation_message_id_for
from nurture.mail.context import Recipient, template_context
from nurture.mail.transports import AmbiguousFailure, PermanentFailure, TemporaryFailure
from nurture.models import ConsentRecord, OutboxMessage, OutboxStatus, Subscriber, abuse_limits, events
from nurture.sequences.sync import get_sequence
from nurture.subscribers.confirmation import CONFIRM
from nurture.subscribers.suppression import is_suppressed, suppress

log = logging.getLogger(__name__)

TEMPLATES = {CONFIRM: "transactional/confirm"}
FALLBACK_COURSE_NAME = "our email course"


@dataclass(frozen=True)
class Prepared:
    recipient: Recipient
    template: str
    sequence_name: str
    confirm_url: str


class Outbox(Mailer):
    """The confirmation outbox's sender: claims, sends and records transactional email."""

    def drain(self, limit: int = 200) -> Counter[str]:
        """One tick: reap, claim up to ``limit`` due messages, send them; returns outcome counts."""
        with transaction(self.factory) as session:
            reap_expired(session, policy=self.settings.mail.ambiguous_policy)
            abuse_limits.purge_expired(session)
        with transaction(self.factory) as session:
            token, ids = claim_due(session, limit=limit, lease_seconds=self.settings.broker.lease_seconds)
        outcomes: Counter[str] = Counter()
        for message_id in ids:
            try:
                outcomes[self.send_one(token, message_id)] += 1
            except Exception:  # one broken row must not strand the rest; its lease brings it back
                log.exception("outbox message %s failed unexpectedly", message_id)
                outcomes["error"] += 1
        return outcomes

    def send_one(self, token: str, message_id: int) -> str:
        prepared = self._prepare(token, message_id)
        if isinstance(prepared, str):
            return prepared
        try:
            data, header_id = self._compose(prepared, message_id)
        except Exception as exc:  # a template bug is retried and recorded, never lost
            log.exception("rendering outbox message %s failed", message_id)
            return self._after_temporary(token, message_id, f"render failed: {exc}", OutboxStatus.queued)
        wait = self.breaker.open_for()
        if wait > 0:
            return self._defer(token, message_id, wait)
        self.limiter.acquire()
        outcome = self._begin_sending(token, message_id)
        if outcome is not None:
            return outcome
        try:
            self.transport.send(self.settings.mail.envelope_from, prepared.recipient.email, data)
        except TemporaryFailure as exc:
            self.breaker.record(ok=False)
            return self._after_temporary(token, message_id, str(exc), OutboxStatus.sending)
        except PermanentFailure as exc:
            self.breaker.record(ok=False)
            return self._after_permanent(token, message_id, str(exc))
        except AmbiguousFailure as exc:
            self.breaker.record(ok=False)
            resend = self.settings.mail.ambiguous_policy == "resend"
            status = OutboxStatus.pending if resend else OutboxStatus.ambiguous
            with transaction(self.factory) as session:
                _finish(session, token, message_id, status=status, last_error=str(exc), claim_token=None)
            return "ambiguous"
        self.breaker.record(ok=True)
        with transaction(self.factory) as session:
            _finish(
                session,
                token,
                message_id,
                status=OutboxStatus.sent,
                sent_at=clock.now(),
                message_id=header_id,
                last_error=None,
            )
        return "sent"

    # --- phases -------------------------------------------------------------------------------------------

    def _prepare(self, token: str, message_id: int) -> Prepared | str:
        with transaction(self.factory) as session:
            message = session.get(OutboxMessage, message_id)
            if message is None:
                return "gone"
            if message.status != OutboxStatus.queued or message.claim_token != token:
                return "not-claimed"
            reason = skip_reason(session, message)
            if reason is not None:
                return _skip(session, message, reason)
            consent = message.consent
            subscriber = message.subscriber
            assert consent is not None  # skip_reason returned "erased" otherwise
            sequence = get_sequence(session, consent.sequence_slug) if consent.sequence_slug else None
            return Prepared(
                # No name: until the address owner confirms, whoever typed the form is a stranger, and this
                # email must carry nothing a stranger wrote (no "Hello <insult>" sent to a victim).
                recipient=Recipient(subscriber.email, None, subscriber.public_id),
                template=TEMPLATES[message.kind],
                sequence_name=sequence.name if sequence is not None else FALLBACK_COURSE_NAME,
                confirm_url=tokens.link(tokens.Purpose.confirm, consent.public_id, self.settings),
            )

    def _compose(self, prepared: Prepared, message_id: int) -> tuple[bytes, str]:
        context = template_context(
            self.settings,
            prepared.recipient,
            sequence_name=prepared.sequence_name,
            step_number=0,
            step_count=0,
        )
        context["confirm_url"] = prepared.confirm_url
        rendered = self.templates.render(prepared.template, context)
        header_id = confirmation_message_id_for(
            message_id, self.settings.secret_key, self.settings.mail.from_domain
        )
        envelope = Envelope(
            from_address=self.settings.mail.from_address,
            to_address=prepared.recipient.email,
            to_name=prepared.recipient.first_name,
            message_id=header_id,
            date=clock.now(),
            # Its own List-Unsubscribe: someone who never asked for this can stop it in one click.
            unsubscribe_url=context["unsubscribe_url"],
            unsubscribe_mailto=self.settings.mail.resolved_unsubscribe_mailto,
            reply_to=self.settings.mail.reply_to or None,
        )
        return compose(rendered, envelope), header_id

    def _begin_sending(self, token: str, message_id: int) -> str | None:
        with transaction(self.factory) as session:
            message = session.get(OutboxMessage, message_id)
            if message is None:
                return "gone"
            reason = skip_reason(session, message, lock=True)
            if reason is not None:
                if message.status == OutboxStatus.queued and message.claim_token == token:
                    return _skip(session, message, reason)
                return "not-claimed"
            # Under the claim token itself: one message at a time, so it is its attempt's only row.
            moved = leases.OUTBOX.begin(
                session, token, [message_id], attempt=token, lease_seconds=self.settings.broker.lease_seconds
            )
            return None if moved else "not-claimed"

    def _defer(self, token: str, message_id: int, seconds: float) -> str:
        """The breaker is open: hand the message back unsent, due again when the breaker may close."""
        with transaction(self.factory) as session:
            leases.OUTBOX.release(session, token, [message_id], after_seconds=seconds)
        return "deferred"

    def _after_temporary(self, token: str, message_id: int, error: str, from_status: str) -> str:
        with transaction(self.factory) as session:
            message = session.get(OutboxMessage, message_id)
            if message is None:
                return "gone"
            attempts = message.attempts + (1 if from_status == OutboxStatus.queued else 0)
            if attempts >= self.settings.mail.max_attempts:
                _finish(
                    session,
                    token,
                    message_id,
                    from_status,
                    status=OutboxStatus.failed,
                    attempts=attempts,
                    last_error=error,
                    claim_token=None,
                )
                return "failed"
            _finish(
                session,
                token,
                message_id,
                from_status,
                status=OutboxStatus.pending,
                attempts=attempts,
                due_at=clock.db_now(session) + leases.retry_backoff(self.settings, attempts),
                last_error=error,
                claim_token=None,
            )
        return "retry"

    def _after_permanent(self, token: str, message_id: int, error: str) -> str:
        with transaction(self.factory) as session:
            message = session.get(OutboxMessage, message_id)
            if message is None:
                return "gone"
            _finish(
                session, token, message_id, status=OutboxStatus.failed, last_error=error, claim_token=None
            )
            suppress(session, message.subscriber.email, "hard-bounce", error)
            events.record(session, "bounced", subscriber_id=message.subscriber_id, outbox_id=message_id)
        return "failed"


def skip_reason(session: Session, message: OutboxMessage, *, lock: bool = False) -> str | None:
    """Why this message must not go now, or None."""
    query = select(Subscriber).where(Subscriber.id == message.subscriber_id)
    if lock:
        # Share-lock the subscriber so an unsubscribe cannot commit between this check and "sending".
        query = query.with_for_update(read=True)
    subscriber = session.scalar(query.execution_options(populate_existing=True))
    consent = session.get(ConsentRecord, message.consent_id) if message.consent_id else None
    if subscriber is None or consent is None:
        return "erased"
    if consent.confirmed_at is not None:
        return "already-confirmed"
    if subscriber.unsubscribed_at is not None and subscriber.unsubscribed_at >= message.created_at:
        return "unsubscribed"  # they used this email's own unsubscribe link before it went out
    if is_suppressed(session, subscriber.email):
        return "suppressed"
    return None


def _skip(session: Session, message: OutboxMessage, reason: str) -> str:
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message.id, OutboxMessage.status == OutboxStatus.queued)
        .values(status=OutboxStatus.skipped, skip_reason=reason, claim_token=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return f"skipped:{reason}"


def _finish(
    session: Session,
    token: str,
    message_id: int,
    from_status: str = OutboxStatus.sending,
    /,
    **values: object,
) -> bool:
    """Record an outcome only while the row is still ours; a later certainty beats a reaper's guess."""
    return bool(leases.OUTBOX.finish(session, token, [message_id], from_status, **values))


def claim_due(session: Session, *, limit: int, lease_seconds: int) -> tuple[str, list[int]]:
    claim = leases.OUTBOX.claim(session, limit=limit, lease_seconds=lease_seconds)
    return claim.token, claim.ids


def reap_expired(session: Session, *, policy: str) -> None:
    """Expired claims back to pending; a message whose worker died mid-send is resent (or held)."""
    settled = leases.OUTBOX.reap(session, policy=policy).settled
    for message_id in settled.unknown:
        events.record(
            session, "outbox-ambiguous", outbox_id=message_id, cause="lease expired while sending",
            resolution="resent" if settled.resent else "held",
        )  # fmt: skip
