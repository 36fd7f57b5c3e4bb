"""The schema: who is subscribed, what they are enrolled in, and every email due, sent or skipped."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime


def _public_id() -> str:
    # Tokens and URLs name subscribers by this random id, never by their row id or email address.
    return secrets.token_urlsafe(16)


class SubscriberStatus(StrEnum):
    pending = "pending"  # signed up, not yet confirmed
    active = "active"
    unsubscribed = "unsubscribed"


class EnrollmentStatus(StrEnum):
    active = "active"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


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


class SequenceStatus(StrEnum):
    draft = "draft"  # defined but never published: no signups, no enrollments (nurture.sequences.versions)
    active = "active"
    scheduled = "scheduled"  # starts at activate_at; enrollments made before then start at activation
    paused = "paused"
    archived = "archived"


# Deliveries in these states may still be sent; cancelling a subscriber moves them all to cancelled.
OPEN_DELIVERY_STATUSES = (DeliveryStatus.pending, DeliveryStatus.queued)


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=_public_id)
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


class Sequence(Base):
    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=SequenceStatus.active)
    # When staff paused it (resume "shift" moves held emails by now - paused_at), and when a scheduled
    # sequence starts; both NULL otherwise.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    activate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("sequence_versions.id", use_alter=True, name="fk_sequences_current_version")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)

    versions: Mapped[list[SequenceVersion]] = relationship(
        back_populates="sequence",
        foreign_keys="SequenceVersion.sequence_id",
        order_by="SequenceVersion.number",
    )
    current_version: Mapped[SequenceVersion | None] = relationship(foreign_keys=[current_version_id])


class SequenceVersion(Base):
    """An immutable snapshot of a sequence definition; enrollments are pinned to one."""

    __tablename__ = "sequence_versions"
    __table_args__ = (UniqueConstraint("sequence_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    number: Mapped[int] = mapped_column(Integer)
    definition_hash: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    timezone: Mapped[str | None] = mapped_column(String(64))
    window_days: Mapped[str | None] = mapped_column(String(32))  # e.g. "0,1,2,3,4"; NULL: no window
    window_start: Mapped[str | None] = mapped_column(String(5))  # "09:00" local
    window_end: Mapped[str | None] = mapped_column(String(5))
    # Public-holiday calendar ("US", "GB-SCT"; nurture.sequences.holidays) whose dates close the window;
    # NULL: none.
    holidays: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    # Versions (nurture.sequences.versions): where the definition came from ("file": YAML + sync, "ui": the
    # staff
    # editor), who made it, and when it went live; NULL published_at is a draft nobody is enrolled in.
    origin: Mapped[str] = mapped_column(String(8), default="file", server_default="file")
    author: Mapped[str | None] = mapped_column(String(320))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    sequence: Mapped[Sequence] = relationship(back_populates="versions", foreign_keys=[sequence_id])
    steps: Mapped[list[Step]] = relationship(back_populates="version", order_by="Step.position")


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("version_id", "key"), UniqueConstraint("version_id", "position"))

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("sequence_versions.id"))
    key: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)  # 1-based
    delay_seconds: Mapped[int] = mapped_column(Integer)  # after the previous step
    template: Mapped[str] = mapped_column(String(200))
    # A subject line (Jinja, like subject.txt) that replaces the template's own; NULL: the template's.
    subject: Mapped[str | None] = mapped_column(String(300))
    # False: the step goes out at its due time whatever the hour or day (``window: false`` in the file, e.g.
    # a welcome sent right after confirming); nurture.sequences.timetable then skips the send window and
    # holidays.
    use_window: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    version: Mapped[SequenceVersion] = relationship(back_populates="steps")

    @property
    def delay(self) -> timedelta:
        """The delay after the previous step (what nurture.sequences.timetable reads from any step-like
        object)."""
        return timedelta(seconds=self.delay_seconds)


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (Index("ix_enrollments_subscriber_sequence", "subscriber_id", "sequence_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("sequence_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default=EnrollmentStatus.active)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(64))

    subscriber: Mapped[Subscriber] = relationship(back_populates="enrollments")
    sequence: Mapped[Sequence] = relationship()
    version: Mapped[SequenceVersion] = relationship()
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="enrollment", order_by="Delivery.due_at")


class Delivery(Base):
    """One email to one subscriber for one step: the schedule lives in these rows, not in the broker."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id"),
        # The dispatcher's claim query reads only pending rows in due order; a partial index keeps it
        # small and flat however many sent rows accumulate.
        Index(
            "ix_deliveries_pending_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_deliveries_leased",
            "lease_until",
            postgresql_where=text("status IN ('queued', 'sending')"),
            sqlite_where=text("status IN ('queued', 'sending')"),
        ),
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


class SendReceipt(Base):
    """Proof that the SMTP server accepted one delivery's email (nurture.delivery.receipts), written right
    after its
    250 and deleted when the delivery is recorded as sent. No foreign key on purpose: the check would take a
    share lock on the delivery row on every email, which cost PostgreSQL four times the insert itself
    (docs/benchmarks.md); a receipt outlives an erased delivery only until the group records or the reaper
    settles it."""

    __tablename__ = "send_receipts"

    delivery_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    message_id: Mapped[str] = mapped_column(String(255))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Suppression(Base):
    """Addresses we must never mail (hard bounces, complaints, manual blocks), kept apart from subscribers
    so a suppression outlives an erased or re-created subscriber."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


# --- prospects' side: consent ledger, transactional outbox, rate limits ---------------------------------


class ConsentRecord(Base):
    """Proof of consent, one row per signup (or resubscribe): who, when, from where, and the exact words they
    agreed to. Kept after unsubscribe; removed only when the subscriber is erased."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_subscriber", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Confirm tokens name the signup by this random id, so confirming applies this signup's choices.
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=_public_id)
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
        Index(
            "ix_outbox_messages_pending_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_outbox_messages_leased",
            "lease_until",
            postgresql_where=text("status IN ('queued', 'sending')"),
            sqlite_where=text("status IN ('queued', 'sending')"),
        ),
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


class RateLimitCounter(Base):
    """Fixed-window hit counters shared by every web worker (one row per key per window)."""

    __tablename__ = "rate_limit_counters"
    __table_args__ = (Index("ix_rate_limit_counters_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- staff: accounts, API tokens, login throttling, audit log --------------------------------------------


class StaffRole(StrEnum):
    viewer = "viewer"  # reads everything except users and the audit log
    editor = "editor"  # also changes sequences and subscribers
    admin = "admin"  # also manages staff users and reads the audit log


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=StaffRole.viewer)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, PHC string
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token for /api/v1; only its SHA-256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[StaffUser] = relationship()


class LoginFailure(Base):
    """One failed login: counted per account and per client IP over a sliding window by every web worker."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_email_created", "email", "created_at"),
        Index("ix_login_failures_ip_created", "ip_key", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    ip_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


class AuditLog(Base):
    """Every change a staff member made: who, when, what, and the state before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_created", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Kept as text too, so the entry outlives the account.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)


# Staff reporting and sequence-wide pause/resume select by step and by sequence; without these they would
# scan every delivery and enrollment ever written.
Index("ix_deliveries_step_status", Delivery.step_id, Delivery.status, Delivery.skip_reason)
Index("ix_enrollments_sequence_status", Enrollment.sequence_id, Enrollment.status)


# --- goals, exits and tracking (issue 9) ------------------------------------------------------------------


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


# --- outbound webhooks (nurture/webhooks/, docs/webhooks.md) -------------------------------------------


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
        Index(
            "ix_webhook_deliveries_pending_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
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


class SetupToken(Base):
    """The one-time link that lets the first admin be created in the browser (nurture.staff.first_admin).

    Only a hash is stored; the link is printed once by ``nurture run`` (or ``nurture users setup-link``). It
    works once, until its expiry, and only while no active admin exists."""

    __tablename__ = "setup_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobStatus(StrEnum):
    running = "running"
    done = "done"
    failed = "failed"


class Job(Base):
    """Long staff work (an import, an export, enrolling thousands) running in the background of the web
    process, with counts the browser polls (nurture.staff.jobs). ``heartbeat_at`` moves with the counts, so a
    job
    whose process died is told apart from a slow one."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "import", "export", "enroll"
    label: Mapped[str] = mapped_column(String(200))  # what the page calls it: "Import of people.csv"
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.running)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[bytes | None] = mapped_column(LargeBinary)  # an export's file, for the job page
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=clock.now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
