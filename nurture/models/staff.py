"""Staff accounts, API tokens, login failures, the audit log, the setup link and long jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nurture.core import clock
from nurture.core.db import Base, UTCDateTime


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
    job whose process died is told apart from a slow one."""

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
