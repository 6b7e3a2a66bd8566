"""/healthz and /readyz, for process supervisors and load balancers (no API key needed)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import ResourcesDep
from api.problems import problem_response, problem_type
from api.readiness import check_readiness
from api.schemas import Liveness, NotReady, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> Liveness:
    return Liveness()


@router.get(
    "/readyz",
    summary="Readiness: the database, Temporal and the broker are reachable",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "At least one dependency is not reachable."}},
)
async def readyz(resources: ResourcesDep, request: Request) -> Readiness | JSONResponse:
    readiness = await check_readiness(resources)
    if readiness.status == "ready":
        return readiness
    failed = ", ".join(name for name, check in readiness.checks.items() if not check.ok)
    return problem_response(
        request,
        HTTPStatus.SERVICE_UNAVAILABLE,
        "Not ready",
        f"not reachable: {failed}",
        type_=problem_type("not-ready"),
        extensions={"checks": {name: check.model_dump() for name, check in readiness.checks.items()}},
    )
