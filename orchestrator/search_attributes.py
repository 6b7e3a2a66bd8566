"""Search attributes the Temporal Web UI filters orders by. Register them on the server first."""

from temporalio.common import SearchAttributeKey

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")

ALL = (ORDER_STATUS, CUSTOMER_ID)
