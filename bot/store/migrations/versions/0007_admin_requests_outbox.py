"""admin_requests (the admins' requests to the worker) and a structured outbox (kind + payload)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

"""
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Requests become rows the worker's jobs read; a notification says what happened, not how to word it.

    Unsent messages written before keep their words as a ``text`` notification.
    """
    op.create_table('admin_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('job_id', sa.String(length=96), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('chat_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('admin_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_requests_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_admin_requests_taken_at'), ['taken_at'], unique=False)

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('payload', sa.JSON(), nullable=True))
    _text_to_payload()
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('text')
        batch_op.alter_column('kind', existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column('payload', existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    """Back to plain text: a ``text`` notification keeps its words, any other its kind and payload as JSON."""
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text', sa.Text(), nullable=True))
    _payload_to_text()
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('payload')
        batch_op.drop_column('kind')
        batch_op.alter_column('text', existing_type=sa.Text(), nullable=False)

    with op.batch_alter_table('admin_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_requests_taken_at'))
        batch_op.drop_index(batch_op.f('ix_admin_requests_job_id'))
    op.drop_table('admin_requests')


NOTIFICATIONS = sa.table('notifications', sa.column('id', sa.Integer()), sa.column('text', sa.Text()),
                         sa.column('kind', sa.String()), sa.column('payload', sa.JSON()))


def _text_to_payload() -> None:
    """Each message's words as a ``text`` notification, row by row (the outbox is small)."""
    table, connection = NOTIFICATIONS, op.get_bind()
    for row_id, text in connection.execute(sa.select(table.c.id, table.c.text)).all():
        connection.execute(table.update().where(table.c.id == row_id).values(kind='text', payload={'text': text}))


def _payload_to_text() -> None:
    """A ``text`` notification's words back; any other kind as its JSON."""
    table, connection = NOTIFICATIONS, op.get_bind()
    for row_id, kind, payload in connection.execute(sa.select(table.c.id, table.c.kind, table.c.payload)).all():
        payload = payload or {}
        text = payload.get('text') if kind == 'text' else None
        connection.execute(table.update().where(table.c.id == row_id).values(
            text=text if isinstance(text, str) else json.dumps({'kind': kind, **payload})))
