"""A small client of the service's HTTP API, for the ops CLI and the demo."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from infra.settings import Settings

Json = dict[str, Any]


class ApiError(Exception):
    """An RFC 9457 problem answered by the API (or a transport failure)."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.title = title
        self.detail = detail


class OrdersApi:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str | None, api_key: str | None) -> OrdersApi:
        """Defaults: the API of these settings, with the development key when it is configured."""
        url = base_url or f"http://{settings.api_host}:{settings.api_port}"
        return cls(url, api_key or Settings.DEVELOPMENT_API_KEY)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrdersApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ApiError(0, f"the API at {self._http.base_url} is not reachable", str(err)) from err
        if response.is_error:
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            raise ApiError(
                response.status_code,
                str(problem.get("title", response.reason_phrase)),
                str(problem.get("detail", "")),
            )
        return response

    def place_order(self, order: Json, idempotency_key: str | None = None) -> Json:
        key = idempotency_key or str(uuid.uuid4())
        return dict(self._call("POST", "/orders", json=order, headers={"Idempotency-Key": key}).json())

    def order(self, order_id: str) -> Json:
        return dict(self._call("GET", f"/orders/{order_id}").json())

    def orders(self, **filters: str | int | None) -> Json:
        params = {name: value for name, value in filters.items() if value is not None}
        return dict(self._call("GET", "/orders", params=params).json())

    def cancel(self, order_id: str, reason: str) -> Json:
        return dict(self._call("POST", f"/orders/{order_id}/cancel", json={"reason": reason}).json())

    def notifications(self, order_id: str) -> Json:
        return dict(self._call("GET", f"/orders/{order_id}/notifications").json())

    def loyalty(self, customer_id: str) -> Json:
        return dict(self._call("GET", f"/customers/{customer_id}/loyalty").json())

    def sales(self, day: str) -> Json:
        return dict(self._call("GET", "/analytics/sales", params={"date": day}).json())

    def ensure_product(self, sku: str, name: str, unit_price: int, currency: str, stock: int) -> Json:
        """Create the product, or reset the stock of an existing one (demo seeding is repeatable)."""
        try:
            return dict(
                self._call(
                    "POST",
                    "/products",
                    json={
                        "sku": sku,
                        "name": name,
                        "unit_price": unit_price,
                        "currency": currency,
                        "initial_stock": stock,
                    },
                ).json()
            )
        except ApiError as err:
            if err.status != 409:
                raise
        return dict(
            self._call("POST", f"/products/{sku}/stock", json={"mode": "set", "quantity": stock}).json()
        )
