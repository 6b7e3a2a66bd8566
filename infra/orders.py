"""The one module that owns order rows: create an order (priced from the catalogue), lock it for a step,
move its status with a history entry. The API, the activities and the tools all go through here.

SQLAlchemy Core on a connection inside the caller's transaction (`infra.db.transaction`): these run on
every order, and Core skips the ORM's unit of work and identity map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Insert,
    Row,
    String,
    Text,
    bindparam,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from domain.model import Money, OrderStatus, PlaceOrder, check_transition, price_order, workflow_id_for
from infra import models
from infra.db import engine_of, transaction
from infra.models import UTCDateTime

# (joined entity, ON clause) for the outer joins of `lock_order`.
OuterJoin = tuple[Any, ColumnElement[bool]]


class OrderNotFound(LookupError):
    """No order row with that id. In an activity it is a retryable failure of type `OrderNotFound`."""


async def insert_order(conn: AsyncConnection, command: PlaceOrder) -> Money:
    """Write the order in PLACED state with its lines, priced from the catalogue, and its first history
    row, in the caller's transaction (two statements on PostgreSQL, four on SQLite). Returns its total.

    Raises UnknownProduct / InvalidOrder before anything is written; IntegrityError if the id exists.
    """
    skus = [item.sku for item in command.items]
    products = await conn.execute(
        select(models.Product.sku, models.Product.unit_price, models.Product.currency).where(
            models.Product.sku.in_(skus)
        )
    )
    prices = {sku: Money(unit_price, currency) for sku, unit_price, currency in products}
    lines, total = price_order(command.items, prices)
    now = models.utcnow()
    # Timestamps given: column defaults are not applied inside a WITH (below).
    order = insert(models.Order).values(
        created_at=now,
        updated_at=now,
        id=command.order_id,
        workflow_id=workflow_id_for(command.order_id),
        customer_id=command.customer_id,
        customer_email=command.customer_email,
        currency=total.currency,
        total_amount=total.amount,
        payment_token=command.payment_token,
        shipping_address=asdict(command.shipping_address),
        status=OrderStatus.PLACED,
    )
    rows = [
        {
            "order_id": command.order_id,
            "line_no": number,
            "sku": line.sku,
            "quantity": line.quantity,
            "unit_price": line.unit_price.amount,
            "line_total": line.total.amount,
        }
        for number, line in enumerate(lines, start=1)
    ]
    if conn.dialect.name == "postgresql":
        # One statement for the three inserts (foreign keys are checked at its end).
        placed = order.returning(models.Order.id).cte("placed")
        order_lines = _lines_from_arrays(placed, rows).cte("order_lines")
        await conn.execute(_history_from(placed, OrderStatus.PLACED, None).add_cte(placed, order_lines))
    else:  # SQLite has no data-modifying WITH
        await conn.execute(order)
        await conn.execute(insert(models.OrderLine), rows)
        await conn.execute(
            insert(models.OrderStatusChange).values(order_id=command.order_id, status=OrderStatus.PLACED)
        )
    return total


async def create_order(
    session_factory: async_sessionmaker[AsyncSession], command: PlaceOrder
) -> Money | None:
    """Write the order (`insert_order`) in a transaction of its own, unless it exists.

    Returns the order's total, or None when an order with this id already exists (nothing is written then).
    Raises UnknownProduct / InvalidOrder before anything is written.
    """

    async def create(conn: AsyncConnection) -> Money | None:
        if await _exists(conn, command.order_id):
            return None
        return await insert_order(conn, command)

    engine = engine_of(session_factory)
    try:
        return await transaction(engine, create)
    except IntegrityError:
        # A concurrent placement of the same order won the race; its row is the order.
        async with engine.connect() as conn:
            if await _exists(conn, command.order_id):
                return None
        raise


async def order_total(session_factory: async_sessionmaker[AsyncSession], order_id: str) -> Money | None:
    """The recorded order's total, or None for an unknown order."""
    async with engine_of(session_factory).connect() as conn:
        row = (
            await conn.execute(
                select(models.Order.total_amount, models.Order.currency).where(models.Order.id == order_id)
            )
        ).first()
    return Money(row.total_amount, row.currency) if row is not None else None


async def _exists(conn: AsyncConnection, order_id: str) -> bool:
    return await conn.scalar(select(models.Order.id).where(models.Order.id == order_id)) is not None


async def lock_order(
    conn: AsyncConnection,
    order_id: str,
    *columns: ColumnElement[Any] | Any,
    outer_joins: Sequence[OuterJoin] = (),
) -> Row[Any]:
    """Lock the order's row and read its `status` and `columns` (of the order or of `outer_joins`), in one
    statement. Serializes the steps of one order: FOR UPDATE on PostgreSQL; on SQLite every transaction
    already holds the write lock (BEGIN IMMEDIATE). Raises OrderNotFound.

    On PostgreSQL the order's columns are those of its latest version, but the joined rows are read as
    of the statement's start: when the lock had to wait for another step of the order, they may miss
    what that step wrote. Use them only where such a miss is harmless (a write that a unique key or
    ON CONFLICT absorbs, a provider call deduplicated by its key); read anything else after the lock.
    """
    row = (await conn.execute(_locking_select(order_id, columns, outer_joins))).first()
    if row is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return row


async def lock_order_with_lines(
    conn: AsyncConnection,
    order_id: str,
    *columns: ColumnElement[Any] | Any,
    outer_joins: Sequence[OuterJoin] = (),
) -> tuple[Row[Any], list[Row[Any]]]:
    """`lock_order` and the order's lines (`sku`, `quantity`, `unit_price`, `line_total`, by line
    number) in the same statement: the order's columns are repeated on each line's row.

    Returns (the first row, every row). Raises OrderNotFound.
    """
    line = models.OrderLine
    statement = (
        _locking_select(
            order_id, (*columns, line.sku, line.quantity, line.unit_price, line.line_total), outer_joins
        )
        .join(line, line.order_id == models.Order.id)
        .order_by(line.line_no)
    )
    rows = list((await conn.execute(statement)).all())
    if not rows:
        # Every order has a line (`price_order`), so no row means no order.
        raise OrderNotFound(f"order {order_id} does not exist")
    return rows[0], rows


def _locking_select(order_id: str, columns: Sequence[Any], outer_joins: Sequence[OuterJoin]) -> Any:
    statement = select(models.Order.status, *columns).select_from(models.Order)
    for target, on in outer_joins:
        statement = statement.outerjoin(target, on)
    return statement.where(models.Order.id == order_id).with_for_update(of=models.Order)


async def transition(
    conn: AsyncConnection,
    order_id: str,
    current: str,
    target: OrderStatus,
    reason: str | None = None,
    **values: Any,
) -> bool:
    """Move the order from `current` (read under its lock) to `target`, with `values` for other columns
    of the order, and record it; False (and nothing written) if it is there already.

    Raises InvalidStatusTransition for a move the status machine forbids.
    """
    if not check_transition(OrderStatus(current), target):
        return False
    # updated_at given: `onupdate` is not applied inside a WITH (below).
    move = (
        update(models.Order)
        .where(models.Order.id == order_id)
        .values(status=target, updated_at=models.utcnow(), **values)
    )
    if conn.dialect.name == "postgresql":
        # One statement, one round trip: the history row is written from the UPDATE's RETURNING.
        moved = move.returning(models.Order.id).cte("moved")
        await conn.execute(_history_from(moved, target, reason).add_cte(moved))
    else:  # SQLite has no data-modifying WITH
        await conn.execute(move)
        await conn.execute(
            insert(models.OrderStatusChange).values(order_id=order_id, status=target, reason=reason)
        )
    return True


_LINE_COLUMNS = ("line_no", "sku", "quantity", "unit_price", "line_total")


def _lines_from_arrays(placed: CTE, rows: list[dict[str, Any]]) -> Insert:
    """INSERT of the order's lines from one array parameter per column (unnest): the same SQL for any
    number of lines, so SQLAlchemy compiles it once (a multi-row VALUES is compiled on every call)."""
    table = models.OrderLine.__table__
    arrays = [
        bindparam(name, [row[name] for row in rows], type_=postgresql.ARRAY(table.c[name].type))
        for name in _LINE_COLUMNS
    ]
    lines = func.unnest(*arrays).table_valued(*_LINE_COLUMNS).render_derived(name="line")
    # The placed order is one row: each line gets its id (ON true says the cross join is meant).
    each_line = select(placed.c.id, *(lines.c[name] for name in _LINE_COLUMNS)).select_from(
        placed.join(lines, true())
    )
    return insert(models.OrderLine).from_select(["order_id", *_LINE_COLUMNS], each_line)


def _history_from(written: CTE, status: OrderStatus, reason: str | None) -> Insert:
    """The status history row of the order a data-modifying CTE returned (its `id`)."""
    change = select(
        written.c.id, literal(status, String), literal(reason, Text), literal(models.utcnow(), UTCDateTime)
    )
    return insert(models.OrderStatusChange).from_select(_HISTORY_COLUMNS, change)


_HISTORY_COLUMNS = ["order_id", "status", "reason", "created_at"]
