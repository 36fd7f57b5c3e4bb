"""goals, exits and tracking: reported events (idempotent), goal completions, tracked links, clicks

Revision ID: d9633546b153
Revises: 7bcad223e42d
Create Date: 2026-11-27 14:22:16.924638
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.core.db

revision: str = "d9633546b153"
down_revision: str | None = "7bcad223e42d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "external_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_external_events_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_external_events_idempotency_key")),
    )
    with op.batch_alter_table("external_events", schema=None) as batch_op:
        batch_op.create_index("ix_external_events_subscriber", ["subscriber_id"], unique=False)

    op.create_table(
        "goal_completions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("sequence_id", sa.Integer(), nullable=False),
        sa.Column("goal", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_goal_completions_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["enrollments.id"],
            name=op.f("fk_goal_completions_enrollment_id_enrollments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sequence_id"], ["sequences.id"], name=op.f("fk_goal_completions_sequence_id_sequences")
        ),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name=op.f("fk_goal_completions_step_id_steps")),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_goal_completions_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_goal_completions")),
        sa.UniqueConstraint("enrollment_id", name=op.f("uq_goal_completions_enrollment_id")),
    )
    with op.batch_alter_table("goal_completions", schema=None) as batch_op:
        batch_op.create_index("ix_goal_completions_sequence_step", ["sequence_id", "step_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_goal_completions_subscriber_id"), ["subscriber_id"], unique=False
        )

    op.create_table(
        "tracked_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("goal", sa.String(length=64), nullable=True),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_tracked_links_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracked_links")),
        sa.UniqueConstraint("token", name=op.f("uq_tracked_links_token")),
    )
    with op.batch_alter_table("tracked_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tracked_links_delivery_id"), ["delivery_id"], unique=False)

    op.create_table(
        "link_clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("created_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["tracked_links.id"],
            name=op.f("fk_link_clicks_link_id_tracked_links"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name=op.f("fk_link_clicks_step_id_steps")),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_link_clicks_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_clicks")),
    )
    with op.batch_alter_table("link_clicks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_link_clicks_link_id"), ["link_id"], unique=False)
        batch_op.create_index(
            "ix_link_clicks_step_kind_subscriber", ["step_id", "kind", "subscriber_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_link_clicks_subscriber_id"), ["subscriber_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("link_clicks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_clicks_subscriber_id"))
        batch_op.drop_index("ix_link_clicks_step_kind_subscriber")
        batch_op.drop_index(batch_op.f("ix_link_clicks_link_id"))

    op.drop_table("link_clicks")
    with op.batch_alter_table("tracked_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tracked_links_delivery_id"))

    op.drop_table("tracked_links")
    with op.batch_alter_table("goal_completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_goal_completions_subscriber_id"))
        batch_op.drop_index("ix_goal_completions_sequence_step")

    op.drop_table("goal_completions")
    with op.batch_alter_table("external_events", schema=None) as batch_op:
        batch_op.drop_index("ix_external_events_subscriber")

    op.drop_table("external_events")
