"""update_claims: which bot replica took each Telegram update

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('update_claims',
    sa.Column('update_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('instance', sa.String(length=64), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('update_id')
    )
    with op.batch_alter_table('update_claims', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_update_claims_claimed_at'), ['claimed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('update_claims', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_update_claims_claimed_at'))
    op.drop_table('update_claims')
