"""A/B tests: the variant each delivery was sent as

Revision ID: f3a9c2e7d5b1
Revises: a7e2c9d4f1b3
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3a9c2e7d5b1"
down_revision: str | None = "a7e2c9d4f1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("variant", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "variant")
