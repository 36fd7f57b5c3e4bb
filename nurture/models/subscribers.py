"""Subscribers, their consent records, the suppression list and the abuse-limit counters."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime

if TYPE_CHECKING:  # relationships name these; SQLAlchemy resolves them by name at mapping time
    from nurture.models.sequences import Enrollment


def new_public_id() -> str:
    # Tokens and URLs name subscribers by this random id, never by their row id or email address.
    return secrets.token_urlsafe(16)


class SubscriberStatus(StrEnum):
    pending = "pending"  # signed up, not yet confirmed
    active = "active"
    unsubscribed = "unsubscribed"


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SubscriberStatus.pending)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by the preferences page: pending emails were postponed to this instant (informational; the
    # postponed due times themselves live on the delivery rows).
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    enrollments: Mapped[list[Enrollment]] = relationship(back_populates="subscriber")


class Suppression(Base):
    """Addresses we must never mail (hard bounces, complaints, manual blocks), kept apart from subscribers
    so a suppression outlives an erased or re-created subscriber."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class ConsentRecord(Base):
    """Proof of consent, one row per signup (or resubscribe): who, when, from where, and the exact words they
    agreed to. Kept after unsubscribe; removed only when the subscriber is erased."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_subscriber", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Confirm tokens name the signup by this random id, so confirming applies this signup's choices.
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    source: Mapped[str] = mapped_column(String(100))  # "hosted-form", "embed", "api", "resubscribe", ...
    form_url: Mapped[str | None] = mapped_column(String(1000))
    consent_version: Mapped[str] = mapped_column(String(32))
    consent_text: Mapped[str] = mapped_column(Text)
    # What the signup asked for; applied to the subscriber only when the address owner confirms.
    sequence_slug: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirm_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_user_agent: Mapped[str | None] = mapped_column(String(512))

    subscriber: Mapped[Subscriber] = relationship()


class RateLimitCounter(Base):
    """Fixed-window hit counters shared by every web worker (one row per key per window)."""

    __tablename__ = "rate_limit_counters"
    __table_args__ = (Index("ix_rate_limit_counters_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
