"""replay: event replays to one reactor and their items (the re-apply grants the runtime claims)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_replays",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("selection", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_replays")),
    )
    with op.batch_alter_table("event_replays", schema=None) as batch_op:
        batch_op.create_index("ix_event_replays_created_at", ["created_at"], unique=False)
    op.create_table(
        "event_replay_items",
        sa.Column("replay_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("reapply", sa.Boolean(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replay_id", "message_id", name=op.f("pk_event_replay_items")),
    )
    with op.batch_alter_table("event_replay_items", schema=None) as batch_op:
        batch_op.create_index("ix_event_replay_items_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("event_replay_items", schema=None) as batch_op:
        batch_op.drop_index("ix_event_replay_items_created_at")
    op.drop_table("event_replay_items")
    with op.batch_alter_table("event_replays", schema=None) as batch_op:
        batch_op.drop_index("ix_event_replays_created_at")
    op.drop_table("event_replays")
