"""Seeing across the seam: logs, traces, metrics, the per-order timeline and the event catalog.

Nothing here starts or connects at import time; entrypoints call the `configure_*` functions.
"""
