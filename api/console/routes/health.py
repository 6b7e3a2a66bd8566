"""Health at a glance (`api.console.health`), refreshed by polling its fragment."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from api.console.deps import Page
from api.console.health import health_snapshot
from api.deps import ResourcesDep
from reactors.registry import REACTORS

router = APIRouter(prefix="/console/health", include_in_schema=False)

REFRESH_SECONDS = 5


@router.get("")
async def health_page(view: Page, resources: ResourcesDep) -> Response:
    snapshot = await health_snapshot(resources, [r.name for r in REACTORS])
    return view.render("health.html", health=snapshot, refresh_seconds=REFRESH_SECONDS)


@router.get("/live")
async def health_live(view: Page, resources: ResourcesDep) -> Response:
    snapshot = await health_snapshot(resources, [r.name for r in REACTORS])
    return view.render("_health.html", health=snapshot, refresh_seconds=REFRESH_SECONDS)
