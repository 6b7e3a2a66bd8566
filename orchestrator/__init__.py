"""The orchestrated core: the order saga workflow, its worker and the client side that starts it."""
