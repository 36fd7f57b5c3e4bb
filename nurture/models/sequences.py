"""Sequences, their immutable versions and steps, and enrollments in them."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime

if TYPE_CHECKING:  # relationships name these; SQLAlchemy resolves them by name at mapping time
    from nurture.models.delivery import Delivery
    from nurture.models.subscribers import Subscriber


class EnrollmentStatus(StrEnum):
    active = "active"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


class SequenceStatus(StrEnum):
    draft = "draft"  # defined but never published: no signups, no enrollments (nurture.sequences.versions)
    active = "active"
    scheduled = "scheduled"  # starts at activate_at; enrollments made before then start at activation
    paused = "paused"
    archived = "archived"


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
    # staff editor), who made it, and when it went live; NULL published_at is a draft nobody is enrolled in.
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


Index("ix_enrollments_sequence_status", Enrollment.sequence_id, Enrollment.status)
