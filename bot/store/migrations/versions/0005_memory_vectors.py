"""memory_entries: embeddings as float32 bytes instead of JSON lists

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

"""
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """A JSON list of 1,280 floats is ~25 KB to parse per row; the same vector as float32 bytes is
    5 KB read with ``numpy.frombuffer`` (the memory reloads every row when another process wrote)."""
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vector', sa.LargeBinary(), nullable=True))
    _convert('embedding', 'vector', lambda values: np.asarray(values, dtype='<f4').tobytes())
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.drop_column('embedding')
        batch_op.alter_column('vector', existing_type=sa.LargeBinary(), nullable=False)


def downgrade() -> None:
    """Back to JSON lists (rounded to 6 decimals, as they were written)."""
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding', sa.JSON(), nullable=True))
    _convert('vector', 'embedding',
             lambda data: [round(float(v), 6) for v in np.frombuffer(data, dtype='<f4')])
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.drop_column('vector')
        batch_op.alter_column('embedding', existing_type=sa.JSON(), nullable=False)


def _convert(source: str, target: str, convert: Callable[[Any], object]) -> None:
    """Fill ``target`` from ``source`` row by row (the table is small: a few thousand rows)."""
    types: dict[str, sa.types.TypeEngine[Any]] = {'embedding': sa.JSON(), 'vector': sa.LargeBinary()}
    table = sa.table('memory_entries', sa.column('id', sa.Integer()), sa.column(source, types[source]),
                     sa.column(target, types[target]))
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[source])).all():
        connection.execute(table.update().where(table.c.id == row_id).values({target: convert(value)}))
