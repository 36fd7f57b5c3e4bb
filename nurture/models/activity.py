"""What happened: the event log, external events and goals, tracked links and their clicks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime


class Event(Base):
    """An append-only log of what happened: attempts, sends, skips, bounces, unsubscribes."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_subscriber", "subscriber_id"),
        Index("ix_events_delivery", "delivery_id"),
        Index("ix_events_kind_created", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class ExternalEvent(Base):
    """An event reported about a subscriber (``POST /api/v1/events`` or a marked link's click), and what it
    did. The unique idempotency key is what makes a repeated report harmless: the second insert fails and
    the first row's ``result`` is answered again."""

    __tablename__ = "external_events"
    __table_args__ = (Index("ix_external_events_subscriber", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # NULL for clicks on goal links: a repeat click finds its enrollment already ended and changes nothing.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # "api" or "click"
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class GoalCompletion(Base):
    """One enrollment ended by a goal, with the step whose email was the last one sent before it (NULL when
    none had been sent): what the per-step conversion figures count."""

    __tablename__ = "goal_completions"
    __table_args__ = (Index("ix_goal_completions_sequence_step", "sequence_id", "step_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"), unique=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    goal: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class TrackedLink(Base):
    """A link in one sent email (kind "click") or its open pixel (kind "open"). ``token`` is what the
    email carries in ``/l/{token}`` or ``/o/{token}``: an HMAC of the delivery, the link's position and its
    URL, so re-rendering the same email yields the same tokens, and no one can forge one."""

    __tablename__ = "tracked_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    url: Mapped[str | None] = mapped_column(Text)
    goal: Mapped[str | None] = mapped_column(String(64))  # set for a link marked data-goal="..."
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class LinkClick(Base):
    """One click (or open). Step and subscriber are copied from the delivery so per-step figures are one
    grouped scan of an index, and the row goes with the subscriber when they are erased."""

    __tablename__ = "link_clicks"
    __table_args__ = (Index("ix_link_clicks_step_kind_subscriber", "step_id", "kind", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("tracked_links.id", ondelete="CASCADE"), index=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id"))
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
