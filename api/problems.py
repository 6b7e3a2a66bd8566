"""Every error answer is an RFC 9457 problem document (`application/problem+json`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
VALIDATION_ERROR = "urn:order-saga:problem:validation-error"


def problem_type(slug: str) -> str:
    """A stable, machine-readable problem type URI."""
    return f"urn:order-saga:problem:{slug}"


class FieldError(BaseModel):
    """One invalid part of the request."""

    location: Literal["body", "query", "path", "header", "cookie"]
    name: str = Field(description="The parameter, or the dotted path of the body field.")
    pointer: str | None = Field(
        default=None, description="JSON Pointer (RFC 6901) to the field in the body; null outside the body."
    )
    detail: str
    code: str = Field(description="Machine-readable reason, e.g. `string_pattern_mismatch`.")


class Problem(BaseModel):
    """RFC 9457 problem details; further members (such as `order_status`) extend it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": VALIDATION_ERROR,
                    "title": "The request is not valid",
                    "status": 422,
                    "detail": "1 field is not valid",
                    "instance": "/orders",
                    "errors": [
                        {
                            "location": "body",
                            "name": "items.0.quantity",
                            "pointer": "/items/0/quantity",
                            "detail": "Input should be less than or equal to 1000",
                            "code": "less_than_equal",
                        }
                    ],
                }
            ]
        },
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ApiProblem(Exception):
    """Raised by services and routes; the handler turns it into a problem response."""

    def __init__(
        self,
        status: HTTPStatus,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or status.phrase
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extensions = extensions


def invalid_cursor(err: Exception) -> ApiProblem:
    """A pagination cursor that this API did not issue (or that was tampered with)."""
    return ApiProblem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "the cursor is not one this API issued",
        type_=problem_type("invalid-cursor"),
        errors=[FieldError(location="query", name="cursor", detail=str(err), code="invalid_cursor")],
    )


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str | None,
    *,
    type_: str = "about:blank",
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=type_,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=list(errors) or None,
        **(extensions or {}),
    )
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic's errors, located: where in the request, and a JSON Pointer into the body."""
    located = []
    for error in errors:
        location, *path = error.get("loc") or ("body",)
        if location not in ("body", "query", "path", "header", "cookie"):
            location, path = "body", [location, *path]
        if error.get("type") == "json_invalid":
            # The position is a character offset into the text, not a field.
            path = []
        located.append(
            FieldError(
                location=location,
                name=".".join(str(part) for part in path) or location,
                pointer=_json_pointer(path) if location == "body" else None,
                detail=str(error.get("msg", "invalid")),
                code=str(error.get("type", "invalid")),
            )
        )
    return located


def _json_pointer(path: Sequence[object]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            request,
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            errors=exc.errors,
            headers=exc.headers,
            extensions=exc.extensions,
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors(exc.errors())
        noun = "field is" if len(errors) == 1 else "fields are"
        return problem_response(
            request,
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "The request is not valid",
            f"{len(errors)} {noun} not valid",
            type_=VALIDATION_ERROR,
            errors=errors,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = HTTPStatus(exc.status_code)
        # Keeps headers such as `Allow` (405) and `WWW-Authenticate` (401).
        return problem_response(request, status, status.phrase, str(exc.detail), headers=exc.headers)

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        return problem_response(request, status, status.phrase, "an unexpected error occurred")

    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be read, or a missing or malformed header.",
    401: "No valid API key: send `Authorization: Bearer <key>`.",
    403: "The API key lacks the scope this operation needs.",
    404: "No such resource.",
    409: "Conflicts with the current state of the resource.",
    422: "The request is not valid; `errors` locates each problem.",
    503: "A dependency (database, Temporal, broker) is not reachable.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses (served as application/problem+json)."""
    return {status: {"model": Problem, "description": _DESCRIPTIONS[status]} for status in statuses}


def use_problem_media_type(openapi: dict[str, Any]) -> dict[str, Any]:
    """Error responses are documented as `application/problem+json`, which is what they are."""
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(status)[0] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return openapi
