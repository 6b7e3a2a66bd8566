"""What the API accepts and answers about products (the catalogue and its stock)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from api.fields import (
    CurrencyCode,
    MinorUnits,
    Sku,
    StockLevel,
    Text,
)

# --- products


class ProductIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sku": "SKU-A",
                    "name": "Difference engine",
                    "unit_price": 1000,
                    "currency": "EUR",
                    "initial_stock": 25,
                }
            ]
        },
    )
    sku: Sku
    name: Text
    unit_price: MinorUnits
    currency: CurrencyCode
    initial_stock: StockLevel = 0


class StockChangeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"mode": "add", "quantity": 10}, {"mode": "set", "quantity": 0}]},
    )
    mode: Literal["add", "set"] = Field(description="`add` to the stock on hand, or `set` it.")
    quantity: StockLevel

    @model_validator(mode="after")
    def _adds_something(self) -> StockChangeIn:
        if self.mode == "add" and self.quantity == 0:
            raise PydanticCustomError("add_nothing", "adding stock needs a quantity of at least 1")
        return self


class ProductOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sku": "SKU-A",
                    "name": "Difference engine",
                    "unit_price": 1000,
                    "currency": "EUR",
                    "on_hand": 25,
                    "reserved": 2,
                    "available": 23,
                    "created_at": "2026-01-05T09:00:00Z",
                    "updated_at": "2026-01-05T10:00:00Z",
                }
            ]
        }
    )
    sku: str
    name: str
    unit_price: int
    currency: str
    on_hand: int
    reserved: int = Field(description="Held by orders in progress.")
    available: int = Field(description="`on_hand - reserved`: what new orders can get.")
    created_at: datetime
    updated_at: datetime


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None
