"""prospects' side: consent ledger, transactional outbox, signup rate limits, subscribers.paused_until

Revision ID: bdf42a90dbd0
Revises: e1c6dd2644e1
Create Date: 2026-11-27 11:35:21.547709
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.core.db

revision: str = "bdf42a90dbd0"
down_revision: str | None = "e1c6dd2644e1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_counters",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("window_start", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_rate_limit_counters")),
    )
    with op.batch_alter_table("rate_limit_counters", schema=None) as batch_op:
        batch_op.create_index("ix_rate_limit_counters_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("form_url", sa.String(length=1000), nullable=True),
        sa.Column("consent_version", sa.String(length=32), nullable=False),
        sa.Column("consent_text", sa.Text(), nullable=False),
        sa.Column("sequence_slug", sa.String(length=64), nullable=True),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("confirmed_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("confirm_ip", sa.String(length=64), nullable=True),
        sa.Column("confirm_user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_consent_records_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
        sa.UniqueConstraint("public_id", name=op.f("uq_consent_records_public_id")),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index("ix_consent_records_subscriber", ["subscriber_id"], unique=False)

    op.create_table(
        "outbox_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("consent_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("skip_reason", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("sent_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consent_id"],
            ["consent_records.id"],
            name=op.f("fk_outbox_messages_consent_id_consent_records"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_outbox_messages_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_messages")),
    )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_messages_leased",
            ["lease_until"],
            unique=False,
            postgresql_where=sa.text("status IN ('queued', 'sending')"),
            sqlite_where=sa.text("status IN ('queued', 'sending')"),
        )
        batch_op.create_index(
            "ix_outbox_messages_pending_due",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index(
            "ix_outbox_messages_subscriber_kind_created",
            ["subscriber_id", "kind", "created_at"],
            unique=False,
        )

    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused_until", nurture.core.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("paused_until")

    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_messages_subscriber_kind_created")
        batch_op.drop_index(
            "ix_outbox_messages_pending_due",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index(
            "ix_outbox_messages_leased",
            postgresql_where=sa.text("status IN ('queued', 'sending')"),
            sqlite_where=sa.text("status IN ('queued', 'sending')"),
        )

    op.drop_table("outbox_messages")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_records_subscriber")

    op.drop_table("consent_records")
    with op.batch_alter_table("rate_limit_counters", schema=None) as batch_op:
        batch_op.drop_index("ix_rate_limit_counters_expires_at")

    op.drop_table("rate_limit_counters")
