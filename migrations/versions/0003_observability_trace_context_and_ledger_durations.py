"""observability: trace context and confirm latency on outbox rows; duration, trace id in the ledger

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirm_ms", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))

    with op.batch_alter_table("reactor_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("duration_ms", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reactor_deliveries", schema=None) as batch_op:
        batch_op.drop_column("trace_id")
        batch_op.drop_column("duration_ms")

    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
        batch_op.drop_column("confirm_ms")
