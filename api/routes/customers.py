"""/customers: what the reactors know about a customer (loyalty points)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import OrderReader, Queries
from api.fields import CUSTOMER_ID_PATTERN
from api.problems import problem_responses
from api.schemas import LoyaltyAccount

router = APIRouter(prefix="/customers", tags=["customers"])

LOYALTY_EXAMPLE = {
    "customer_id": "cust-42",
    "points": 45,
    "entries": [
        {
            "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
            "points": 22,
            "reason": "order shipped",
            "created_at": "2026-01-05T10:00:01Z",
        }
    ],
}


@router.get(
    "/{customer_id}/loyalty",
    summary="A customer's loyalty points",
    description="The balance and the latest ledger entries, newest first. Built from order events by "
    "the loyalty reactor, so it may lag a little; a customer without points has 0. Needs `orders:read`.",
    responses={
        200: {"content": {"application/json": {"example": LOYALTY_EXAMPLE}}},
        **problem_responses(401, 403, 422),
    },
)
async def customer_loyalty(
    caller: OrderReader,
    queries: Queries,
    customer_id: Annotated[
        str,
        Path(
            pattern=CUSTOMER_ID_PATTERN, max_length=64, description="The customer's id.", examples=["cust-42"]
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=200, description="How many ledger entries.")] = 50,
) -> LoyaltyAccount:
    return await queries.loyalty(customer_id, limit=limit)
