"""timetable: a step may skip the send window; a version may close it on public holidays

Revision ID: b8d3e6f1a2c4
Revises: c4f1d2a8b7e3
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b8d3e6f1a2c4"
down_revision: str | None = "c4f1d2a8b7e3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every step stored before this followed the window, which is what the server default says.
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("use_window", sa.Boolean(), server_default=sa.true(), nullable=False))
    with op.batch_alter_table("sequence_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holidays", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sequence_versions", schema=None) as batch_op:
        batch_op.drop_column("holidays")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("use_window")
