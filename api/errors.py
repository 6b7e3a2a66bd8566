"""What the API's commands and queries refuse, in their own terms: no HTTP here.

`api.problems` maps each of these to its status and problem document; the commands, queries and the
catalogue raise them and know nothing of status codes.
"""

from __future__ import annotations

from domain.errors import DomainError
from domain.model import OrderStatus


class ServiceError(Exception):
    """Base of the refusals below; `str(err)` is the human-readable detail."""


class OrderNotFound(ServiceError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"there is no order {order_id}")
        self.order_id = order_id


class OrderRejected(ServiceError):
    """A domain rule refused the order (unknown SKU, mixed currencies...); nothing was written.

    `skus`: the requested lines' SKUs in request order, so the refusal can point at the lines.
    """

    def __init__(self, cause: DomainError, skus: tuple[str, ...]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.skus = skus


class OrchestratorUnavailable(ServiceError):
    """The order is recorded but its saga could not be started: retry with the same Idempotency-Key."""

    def __init__(self, order_id: str) -> None:
        super().__init__(
            "the order is recorded but its processing could not start; retry with the same Idempotency-Key"
        )
        self.order_id = order_id


class CancelRefused(ServiceError):
    """Too late to cancel: shipping has started, or the order has ended (`status`)."""

    def __init__(self, order_id: str, status: OrderStatus, reason: str) -> None:
        super().__init__(reason)
        self.order_id = order_id
        self.status = status


class ProductNotFound(ServiceError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"there is no product {sku}")
        self.sku = sku


class ProductExists(ServiceError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"product {sku} already exists")
        self.sku = sku


class StockConflict(ServiceError):
    """The stock change would go below what orders hold, or above the most a product may hold."""

    def __init__(self, detail: str, *, on_hand: int, reserved: int) -> None:
        super().__init__(detail)
        self.on_hand = on_hand
        self.reserved = reserved


class ReactorNotFound(ServiceError):
    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"there is no reactor {name} (registered: {', '.join(known)})")
        self.name = name


class DeadLetterNotFound(ServiceError):
    def __init__(self, reactor: str, message_id: str) -> None:
        super().__init__(f"{reactor} has no dead letter {message_id}")


class DeadLetterQueueBusy(ServiceError):
    """Another operator's listing or redrive holds this reactor's DLQ: retry shortly."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))


class BrokerUnavailable(ServiceError):
    """RabbitMQ did not answer (dead letters live there): retry shortly."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the broker is not reachable: {cause}")
