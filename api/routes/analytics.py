"""/analytics: sales figures the analytics reactor keeps per UTC day (`admin` scope)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Admin, Queries
from api.problems import problem_responses
from api.schemas import DailySales

router = APIRouter(prefix="/analytics", tags=["analytics"])

SALES_EXAMPLE = {
    "date": "2026-01-05",
    "orders_shipped": 12,
    "orders_cancelled": 2,
    "skus": [{"sku": "SKU-A", "currency": "EUR", "units": 20, "revenue": 20000}],
}


@router.get(
    "/sales",
    summary="Sales of one day",
    description="Per SKU and currency: units shipped and revenue (minor units), plus the day's orders "
    "shipped and cancelled (cancelled counts FAILED too). A day without sales gives zeros. Built from "
    "order events by the analytics reactor, so it may lag a little. Needs `admin`.",
    responses={
        200: {"content": {"application/json": {"example": SALES_EXAMPLE}}},
        **problem_responses(401, 403, 422),
    },
)
async def daily_sales(
    caller: Admin,
    queries: Queries,
    day: Annotated[date, Query(alias="date", description="A UTC day, YYYY-MM-DD.", examples=["2026-01-05"])],
) -> DailySales:
    return await queries.sales(day)
