"""Deliveries (one per email due), send receipts and the confirmation outbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime
from nurture.models.lease_indexes import leased_index, pending_due_index

if TYPE_CHECKING:  # relationships name these; SQLAlchemy resolves them by name at mapping time
    from nurture.models.sequences import Enrollment, Step
    from nurture.models.subscribers import ConsentRecord, Subscriber


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for due_at
    queued = "queued"  # claimed by a dispatcher, handed to a worker, lease running
    sending = "sending"  # a worker has decided to send and is talking to SMTP
    sent = "sent"
    failed = "failed"  # permanent failure (5xx or attempts exhausted)
    skipped = "skipped"  # should no longer be sent; skip_reason says why
    cancelled = "cancelled"  # withdrawn before it was due (unsubscribe, enrollment ended)
    ambiguous = (
        "ambiguous"  # the worker died or the connection broke after the message may have been accepted
    )
    held = "held"  # its enrollment or sequence is paused; resuming returns it to pending


# Deliveries in these states may still be sent; cancelling a subscriber moves them all to cancelled.
OPEN_DELIVERY_STATUSES = (DeliveryStatus.pending, DeliveryStatus.queued)


class Delivery(Base):
    """One email to one subscriber for one step: the schedule lives in these rows, not in the broker."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id"),
        # The dispatcher's claim query reads only pending rows in due order; a partial index keeps it
        # small and flat however many sent rows accumulate.
        pending_due_index("deliveries"),
        leased_index("deliveries"),
        Index("ix_deliveries_subscriber_status", "subscriber_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    # The A/B variant (nurture.sequences.variants) this email went out as, written when it is first
    # prepared: a resend reads it, and the results count by it. NULL: the step has no test.
    variant: Mapped[str | None] = mapped_column(String(64))

    enrollment: Mapped[Enrollment] = relationship(back_populates="deliveries")
    step: Mapped[Step] = relationship()
    subscriber: Mapped[Subscriber] = relationship()


class SendReceipt(Base):
    """Proof that the SMTP server accepted one delivery's email (nurture.delivery.receipts), written right
    after its 250 and deleted when the delivery is recorded as sent. No foreign key on purpose: the check
    would take a share lock on the delivery row on every email, which cost PostgreSQL four times the insert
    itself (docs/benchmarks.md); a receipt outlives an erased delivery only until the group records or the
    reaper settles it."""

    __tablename__ = "send_receipts"

    delivery_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    message_id: Mapped[str] = mapped_column(String(255))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxStatus(StrEnum):
    pending = "pending"
    queued = "queued"  # claimed by a drain tick, lease running
    sending = "sending"
    sent = "sent"
    failed = "failed"
    skipped = "skipped"
    ambiguous = "ambiguous"


class OutboxMessage(Base):
    """A transactional email (the double opt-in confirmation) waiting for a worker: queued in the web
    request's own transaction, sent by the ``drain_outbox`` task with the claim/lease rules deliveries use."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        pending_due_index("outbox_messages"),
        leased_index("outbox_messages"),
        # The per-address daily limit counts recent confirmation emails per subscriber.
        Index("ix_outbox_messages_subscriber_kind_created", "subscriber_id", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    consent_id: Mapped[int | None] = mapped_column(ForeignKey("consent_records.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.pending)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)

    subscriber: Mapped[Subscriber] = relationship()
    consent: Mapped[ConsentRecord | None] = relationship()


# Staff reporting and sequence-wide pause/resume select by step and by sequence; without these they would
# scan every delivery and enrollment ever written.
Index("ix_deliveries_step_status", Delivery.step_id, Delivery.status, Delivery.skip_reason)
