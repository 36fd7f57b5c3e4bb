"""send receipts: proof of each SMTP 250, written before the next email (nurture.delivery.receipts)

Revision ID: c4f1d2a8b7e3
Revises: 5e7a1c0b9d42
Create Date: 2026-12-01 23:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.core.db

revision: str = "c4f1d2a8b7e3"
down_revision: str | None = "5e7a1c0b9d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_receipts",
        sa.Column("delivery_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("accepted_at", nurture.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_send_receipts")),
    )


def downgrade() -> None:
    op.drop_table("send_receipts")
