"""/products: the catalogue and its stock (`admin` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api.deps import Admin, Products, Sku
from api.fields import CURSOR_PATTERN
from api.problems import problem_responses
from api.product_schemas import ProductIn, ProductOut, ProductPage, StockChangeIn

router = APIRouter(prefix="/products", tags=["products"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Add a product",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}, "required": True}}},
        **problem_responses(400, 401, 403, 409, 422),
    },
)
async def create_product(
    caller: Admin, body: ProductIn, products: Products, request: Request, response: Response
) -> ProductOut:
    created = await products.create(body)
    response.headers["Location"] = request.app.url_path_for("get_product", sku=created.sku)
    return created


@router.post(
    "/{sku}/stock",
    summary="Add to or set the stock on hand",
    description="`add` puts units on hand; `set` replaces the count, never below what orders in "
    "progress have reserved (409).",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def change_stock(caller: Admin, sku: Sku, body: StockChangeIn, products: Products) -> ProductOut:
    return await products.change_stock(sku, body)


@router.get("", summary="List products", description="By SKU.", responses=problem_responses(401, 403, 422))
async def list_products(
    caller: Admin,
    products: Products,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page.")
    ] = None,
) -> ProductPage:
    return await products.list(limit=limit, cursor=cursor)


@router.get(
    "/{sku}",
    name="get_product",
    summary="A product and its stock: on hand, reserved, available",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_product(caller: Admin, sku: Sku, products: Products) -> ProductOut:
    return await products.get(sku)
