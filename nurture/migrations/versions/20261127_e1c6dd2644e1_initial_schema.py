"""initial schema

Revision ID: e1c6dd2644e1
Revises:
Create Date: 2026-11-27 11:14:00.302362
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.core.db

revision: str = "e1c6dd2644e1"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sequences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sequences")),
        sa.UniqueConstraint("slug", name=op.f("uq_sequences_slug")),
    )
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("unsubscribed_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscribers")),
        sa.UniqueConstraint("email", name=op.f("uq_subscribers_email")),
        sa.UniqueConstraint("public_id", name=op.f("uq_subscribers_public_id")),
    )
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("email", name=op.f("uq_suppressions_email")),
    )
    op.create_table(
        "sequence_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sequence_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("window_days", sa.String(length=32), nullable=True),
        sa.Column("window_start", sa.String(length=5), nullable=True),
        sa.Column("window_end", sa.String(length=5), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sequence_id"], ["sequences.id"], name=op.f("fk_sequence_versions_sequence_id_sequences")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sequence_versions")),
        sa.UniqueConstraint("sequence_id", "number", name=op.f("uq_sequence_versions_sequence_id_number")),
    )
    # sequences <-> sequence_versions refer to each other: add the back reference once both exist.
    with op.batch_alter_table("sequences", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_sequences_current_version", "sequence_versions", ["current_version_id"], ["id"]
        )

    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("sequence_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("enrolled_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["sequence_id"], ["sequences.id"], name=op.f("fk_enrollments_sequence_id_sequences")
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_enrollments_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["sequence_versions.id"], name=op.f("fk_enrollments_version_id_sequence_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollments")),
    )
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_enrollments_subscriber_sequence", ["subscriber_id", "sequence_id"], unique=False
        )

    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("delay_seconds", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["sequence_versions.id"], name=op.f("fk_steps_version_id_sequence_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("version_id", "key", name=op.f("uq_steps_version_id_key")),
        sa.UniqueConstraint("version_id", "position", name=op.f("uq_steps_version_id_position")),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
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
            ["enrollment_id"],
            ["enrollments.id"],
            name=op.f("fk_deliveries_enrollment_id_enrollments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name=op.f("fk_deliveries_step_id_steps")),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_deliveries_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("enrollment_id", "step_id", name=op.f("uq_deliveries_enrollment_id_step_id")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_leased",
            ["lease_until"],
            unique=False,
            postgresql_where=sa.text("status IN ('queued', 'sending')"),
            sqlite_where=sa.text("status IN ('queued', 'sending')"),
        )
        batch_op.create_index(
            "ix_deliveries_pending_due",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index("ix_deliveries_subscriber_status", ["subscriber_id", "status"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_events_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_events_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_delivery", ["delivery_id"], unique=False)
        batch_op.create_index("ix_events_kind_created", ["kind", "created_at"], unique=False)
        batch_op.create_index("ix_events_subscriber", ["subscriber_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_subscriber")
        batch_op.drop_index("ix_events_kind_created")
        batch_op.drop_index("ix_events_delivery")

    op.drop_table("events")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_subscriber_status")
        batch_op.drop_index(
            "ix_deliveries_pending_due",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index(
            "ix_deliveries_leased",
            postgresql_where=sa.text("status IN ('queued', 'sending')"),
            sqlite_where=sa.text("status IN ('queued', 'sending')"),
        )

    op.drop_table("deliveries")
    op.drop_table("steps")
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_index("ix_enrollments_subscriber_sequence")

    op.drop_table("enrollments")
    with op.batch_alter_table("sequences", schema=None) as batch_op:
        batch_op.drop_constraint("fk_sequences_current_version", type_="foreignkey")
    op.drop_table("sequence_versions")
    op.drop_table("suppressions")
    op.drop_table("subscribers")
    op.drop_table("sequences")
