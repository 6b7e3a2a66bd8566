"""GET /metrics (Prometheus) and GET /asyncapi.json (the event catalog): no API key, like the probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import ResourcesDep
from messaging.asyncapi import asyncapi_document
from observability.metrics import latest
from reactors.registry import REACTORS

router = APIRouter()


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics of this API process",
    description="Orders placed, and whatever else this process counts, in the Prometheus text format. "
    "The worker, the relay and the reactors serve theirs on ports of their own.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def prometheus_metrics() -> Response:
    body, content_type = latest()
    return Response(body, media_type=content_type)


@router.get(
    "/asyncapi.json",
    tags=["events"],
    summary="The event catalog (AsyncAPI 3.0)",
    description="The order events, their CloudEvents envelope and JSON schemas, the exchange, and which "
    "reactor queue consumes which event; generated from the contracts and the topology.",
    responses={200: {"description": "An AsyncAPI 3.0 document."}},
)
async def asyncapi(resources: ResourcesDep) -> dict[str, Any]:
    return asyncapi_document(resources.settings, REACTORS)
