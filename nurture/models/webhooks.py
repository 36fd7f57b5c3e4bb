"""Outbound webhooks: endpoints, deliveries, attempts and the fan-out cursor."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
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
from nurture.models.lease_indexes import pending_due_index


class WebhookEndpoint(Base):
    """A URL that staff registered to hear about events. Its signing secret is stored encrypted with a key
    derived from NURTURE_SECRET_KEY (it must be readable to sign, so it cannot be hashed)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(Text)  # encrypted "whsec_..." (nurture/webhooks/secrets.py)
    # After a rotation the old secret also signs until this instant, so receivers can switch without a gap.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(320), default="cli")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class WebhookDeliveryStatus(StrEnum):
    pending = "pending"  # waiting for due_at (first try or a retry)
    queued = "queued"  # claimed by a tick, lease running
    succeeded = "succeeded"  # the endpoint answered 2xx
    failed = "failed"  # every scheduled attempt failed (replayable)


class WebhookDelivery(Base):
    """One event for one endpoint. The body is fixed when the row is made, so retries and replays send the
    same bytes under the same webhook-id; only the timestamp (and so the signature) is fresh."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # Fan-out re-reads events around id gaps; this makes doing so never create a second delivery.
        UniqueConstraint("endpoint_id", "event_id"),
        pending_due_index("webhook_deliveries"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_subscriber", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    # Erasing a subscriber erases what we would have told others about them.
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id header
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryStatus.pending)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)

    endpoint: Mapped[WebhookEndpoint] = relationship()
    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", cascade="all, delete-orphan", passive_deletes=True
    )


class WebhookAttempt(Base):
    """Every POST we made: when, what came back, how long it took, and why it was made."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(16))  # "scheduled", "replay", "test"
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_snippet: Mapped[str | None] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(String(500))
    duration_ms: Mapped[int] = mapped_column(Integer)


class WebhookCursor(Base):
    """How far fan-out has read the event log: the highest event id read, and ids below it not yet seen
    (a PostgreSQL transaction that took a smaller id may commit after a larger one), each with when it was
    first missed; a gap still empty after NURTURE_WEBHOOK_GAP_SECONDS is a rolled-back transaction."""

    __tablename__ = "webhook_cursor"

    id: Mapped[int] = mapped_column(primary_key=True)  # always 1: one cursor
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    gaps: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # event id -> ISO instant first missed
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
