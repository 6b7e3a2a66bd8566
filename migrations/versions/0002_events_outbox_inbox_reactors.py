"""events: outbox, inbox, delivery ledger, reactor read models (notification, loyalty, analytics)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:30:07.574975
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "analytics_daily_orders",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("orders_shipped", sa.Integer(), nullable=False),
        sa.Column("orders_cancelled", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_analytics_daily_orders")),
    )
    op.create_table(
        "analytics_daily_sku_sales",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("revenue", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "sku", "currency", name=op.f("pk_analytics_daily_sku_sales")),
    )
    op.create_table(
        "inbox_messages",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name=op.f("pk_inbox_messages")),
    )
    op.create_table(
        "loyalty_balances",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_loyalty_balances")),
    )
    op.create_table(
        "loyalty_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_ledger")),
        sa.UniqueConstraint("event_id", name=op.f("uq_loyalty_ledger_event_id")),
    )
    with op.batch_alter_table("loyalty_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_loyalty_ledger_customer", ["customer_id", "id"], unique=False)

    op.create_table(
        "notifications",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("send_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_notifications")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_order_created", ["order_id", "created_at"], unique=False)

    op.create_table(
        "outbox_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("routing_key", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_status_available", ["status", "available_at"], unique=False)
        batch_op.create_index("ix_outbox_events_subject", ["subject"], unique=False)

    op.create_table(
        "reactor_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reactor_deliveries")),
    )
    with op.batch_alter_table("reactor_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reactor_deliveries_consumer_message", ["consumer", "message_id"], unique=False
        )
        batch_op.create_index("ix_reactor_deliveries_subject", ["subject", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reactor_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_reactor_deliveries_subject")
        batch_op.drop_index("ix_reactor_deliveries_consumer_message")

    op.drop_table("reactor_deliveries")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_events_subject")
        batch_op.drop_index("ix_outbox_events_status_available")

    op.drop_table("outbox_events")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_order_created")

    op.drop_table("notifications")
    with op.batch_alter_table("loyalty_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_ledger_customer")

    op.drop_table("loyalty_ledger")
    op.drop_table("loyalty_balances")
    op.drop_table("inbox_messages")
    op.drop_table("analytics_daily_sku_sales")
    op.drop_table("analytics_daily_orders")
