"""sequence versions: origin, author, published_at (drafts); step subject override

Revision ID: 5e7a1c0b9d42
Revises: a7e3c91b5d02
Create Date: 2026-11-27 14:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.core.db

revision: str = "5e7a1c0b9d42"
down_revision: str | None = "a7e3c91b5d02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sequence_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=8), server_default="file", nullable=False))
        batch_op.add_column(sa.Column("author", sa.String(length=320), nullable=True))
        batch_op.add_column(
            sa.Column("published_at", nurture.core.db.UTCDateTime(timezone=True), nullable=True)
        )
    # Every version written before drafts existed went live when it was synced.
    op.execute("UPDATE sequence_versions SET published_at = created_at")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("subject")
    with op.batch_alter_table("sequence_versions", schema=None) as batch_op:
        batch_op.drop_column("published_at")
        batch_op.drop_column("author")
        batch_op.drop_column("origin")
