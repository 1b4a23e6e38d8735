"""images: widen phash to hold the colour signature next to the pHash

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """``phash`` becomes ``"<phash hex>:<colour signature hex>"``, 51 characters: 64 leaves room.

    Rows already there keep their bare 16-hex pHash; the scraper reads them as "no colour known".
    """
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.alter_column('phash', existing_type=sa.String(length=32), type_=sa.String(length=64),
                              existing_nullable=True)


def downgrade() -> None:
    """Back to 32 characters: the colour signatures are cut off, leaving the bare pHash."""
    images = sa.table('images', sa.column('phash', sa.String()))
    op.execute(images.update().where(sa.func.length(images.c.phash) > 32)
               .values(phash=sa.func.substr(images.c.phash, 1, 16)))
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.alter_column('phash', existing_type=sa.String(length=64), type_=sa.String(length=32),
                              existing_nullable=True)
