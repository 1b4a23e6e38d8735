"""predictions.detail: why a verdict was given ("other_footwear": a shoe, but not a sneaker)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """A nullable column: an answer sent again from its row (a repeated update) is worded as the first.

    Rows from before it have no detail, as their model gave none.
    """
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detail', sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Drop the column (a not_sneaker answer loses its "other footwear" wording)."""
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('detail')
