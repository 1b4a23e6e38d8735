"""predictions: look up the answer to a chat's message

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

"""
from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index (chat_id, message_id): a photo update delivered again (after a crash) finds its answer.

    Not unique: a database written before this revision may hold such repeats already.
    """
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index('ix_predictions_chat_message', ['chat_id', 'message_id'], unique=False)


def downgrade() -> None:
    """Drop the index."""
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_predictions_chat_message')
