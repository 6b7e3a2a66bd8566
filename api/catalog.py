"""Products and their stock: what the /products routes do. No HTTP here: refusals are `api.errors`."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.errors import ProductExists, ProductNotFound, StockConflict
from api.fields import MAX_STOCK
from api.pagination import decode_product_cursor, encode_product_cursor
from api.product_schemas import ProductIn, ProductOut, ProductPage, StockChangeIn
from infra import models
from infra.db import rowcount


class Catalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, product: ProductIn) -> ProductOut:
        try:
            async with self._sessions() as session, session.begin():
                if await session.get(models.Product, product.sku) is not None:
                    raise ProductExists(product.sku)
                row = models.Product(
                    sku=product.sku,
                    name=product.name,
                    unit_price=product.unit_price,
                    currency=product.currency,
                    on_hand=product.initial_stock,
                    reserved=0,
                )
                session.add(row)
        except IntegrityError as err:
            # A concurrent request created the same SKU between our check and our insert.
            raise ProductExists(product.sku) from err
        return _product_out(row)

    async def get(self, sku: str) -> ProductOut:
        async with self._sessions() as session:
            row = await session.get(models.Product, sku)
        if row is None:
            raise ProductNotFound(sku)
        return _product_out(row)

    async def list(self, *, limit: int, cursor: str | None) -> ProductPage:
        query = select(models.Product).order_by(models.Product.sku).limit(limit + 1)
        if cursor is not None:
            query = query.where(models.Product.sku > decode_product_cursor(cursor))
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        page, more = rows[:limit], len(rows) > limit
        return ProductPage(
            items=[_product_out(row) for row in page],
            next_cursor=encode_product_cursor(page[-1].sku) if more else None,
        )

    async def change_stock(self, sku: str, change: StockChangeIn) -> ProductOut:
        """Add to or set the stock on hand, in one conditional update: never below what is reserved."""
        product = models.Product
        statement = update(product).where(product.sku == sku)
        if change.mode == "add":
            statement = statement.where(product.on_hand <= MAX_STOCK - change.quantity).values(
                on_hand=product.on_hand + change.quantity
            )
        else:
            statement = statement.where(product.reserved <= change.quantity).values(on_hand=change.quantity)
        async with self._sessions() as session, session.begin():
            result = await session.execute(statement)
            row = await session.get(product, sku, populate_existing=True)
            if row is None:
                raise ProductNotFound(sku)
            if rowcount(result) != 1:
                raise _stock_conflict(row, change)
            return _product_out(row)


def _stock_conflict(row: models.Product, change: StockChangeIn) -> StockConflict:
    if change.mode == "add":
        detail = f"{row.sku} would hold more than {MAX_STOCK} units"
    else:
        detail = (
            f"{row.sku} has {row.reserved} unit(s) reserved by orders in progress; stock cannot go below that"
        )
    return StockConflict(detail, on_hand=row.on_hand, reserved=row.reserved)


def _product_out(row: models.Product) -> ProductOut:
    return ProductOut(
        sku=row.sku,
        name=row.name,
        unit_price=row.unit_price,
        currency=row.currency,
        on_hand=row.on_hand,
        reserved=row.reserved,
        available=row.on_hand - row.reserved,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
