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
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from api.errors import (
    BrokerUnavailable,
    CancelRefused,
    DeadLetterNotFound,
    DeadLetterQueueBusy,
    OrchestratorUnavailable,
    OrderNotFound,
    OrderRejected,
    ProductExists,
    ProductNotFound,
    ReactorNotFound,
    ServiceError,
    StockConflict,
)
from api.idempotency import KeyInFlight, KeyReused
from api.pagination import InvalidCursor
from domain.errors import CurrencyMismatch, UnknownProduct
from reactors.replay import ReplayError, ReplayNotFound, ReplayRefused

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


def body_too_large(limit: int | None) -> ApiProblem:
    """413: the body is (or was announced as) larger than `API_MAX_BODY_BYTES`."""
    return ApiProblem(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"the request body is larger than the {limit} bytes this API accepts"
        if limit is not None
        else "the request body is larger than this API accepts",
        type_=problem_type("body-too-large"),
        max_body_bytes=limit,
    )


def invalid_cursor(err: Exception) -> ApiProblem:
    """A pagination cursor that this API did not issue (or that was tampered with)."""
    return ApiProblem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "the cursor is not one this API issued",
        type_=problem_type("invalid-cursor"),
        errors=[FieldError(location="query", name="cursor", detail=str(err), code="invalid_cursor")],
    )


def _order_not_found(order_id: str) -> ApiProblem:
    return ApiProblem(
        HTTPStatus.NOT_FOUND, f"there is no order {order_id}", type_=problem_type("order-not-found")
    )


def _order_rejected(rejected: OrderRejected) -> ApiProblem:
    """A domain rule refused the order (unknown SKU, mixed currencies...): 422 naming the lines."""
    cause = rejected.cause
    if isinstance(cause, UnknownProduct):
        slug, code, culprits = "unknown-product", "unknown_product", set(cause.skus)
    elif isinstance(cause, CurrencyMismatch):
        slug, code, culprits = "currency-mismatch", "currency_mismatch", set(rejected.skus)
    else:
        slug, code, culprits = "invalid-order", "invalid_order", set()
    errors = [
        FieldError(
            location="body",
            name=f"items.{index}.sku",
            pointer=f"/items/{index}/sku",
            detail=f"{sku}: {cause}",
            code=code,
        )
        for index, sku in enumerate(rejected.skus)
        if sku in culprits
    ]
    return ApiProblem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        str(cause),
        type_=problem_type(slug),
        title="The order cannot be placed",
        errors=errors,
    )


def _service_problem(err: Exception) -> ApiProblem:
    """The HTTP answer to each refusal of the commands, queries and catalogue (`api.errors`)."""
    match err:
        case OrderNotFound():
            return _order_not_found(err.order_id)
        case OrderRejected():
            return _order_rejected(err)
        case CancelRefused():
            return ApiProblem(
                HTTPStatus.CONFLICT,
                str(err),
                type_=problem_type("cancel-refused"),
                title="Too late to cancel",
                order_id=err.order_id,
                order_status=str(err.status),
            )
        case OrchestratorUnavailable():
            return ApiProblem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                str(err),
                type_=problem_type("orchestrator-unavailable"),
                headers={"Retry-After": "5"},
            )
        case ProductNotFound():
            return ApiProblem(HTTPStatus.NOT_FOUND, str(err), type_=problem_type("product-not-found"))
        case ProductExists():
            return ApiProblem(HTTPStatus.CONFLICT, str(err), type_=problem_type("product-exists"))
        case StockConflict():
            return ApiProblem(
                HTTPStatus.CONFLICT,
                str(err),
                type_=problem_type("stock-conflict"),
                on_hand=err.on_hand,
                reserved=err.reserved,
            )
        case KeyReused():
            return ApiProblem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was already used with a different request body",
                type_=problem_type("idempotency-key-reused"),
            )
        case KeyInFlight():
            return ApiProblem(
                HTTPStatus.CONFLICT,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                type_=problem_type("idempotency-key-in-flight"),
                headers={"Retry-After": "1"},
            )
        case InvalidCursor():
            return invalid_cursor(err)
        case ReactorNotFound():
            return ApiProblem(HTTPStatus.NOT_FOUND, str(err), type_=problem_type("reactor-not-found"))
        case DeadLetterNotFound():
            return ApiProblem(HTTPStatus.NOT_FOUND, str(err), type_=problem_type("dead-letter-not-found"))
        case DeadLetterQueueBusy():
            return ApiProblem(
                HTTPStatus.CONFLICT,
                str(err),
                type_=problem_type("dead-letter-queue-busy"),
                title="Dead-letter queue busy",
                headers={"Retry-After": "2"},
            )
        case BrokerUnavailable():
            return ApiProblem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                str(err),
                type_=problem_type("broker-unavailable"),
                headers={"Retry-After": "5"},
            )
        case ReplayNotFound():
            return ApiProblem(HTTPStatus.NOT_FOUND, str(err), type_=problem_type("replay-not-found"))
        case ReplayRefused():
            return ApiProblem(
                HTTPStatus.CONFLICT, str(err), type_=problem_type("replay-refused"), title="Replay refused"
            )
        case ReplayError():  # the selection: no criterion, nothing matches, too many events
            return ApiProblem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                str(err),
                type_=problem_type("replay-selection-invalid"),
                title="The replay's selection is not valid",
            )
    raise TypeError(f"no problem mapping for {type(err).__name__}") from err


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


def render_problem(request: Request, problem: ApiProblem) -> JSONResponse:
    """The problem response for an ApiProblem (also used by middleware, outside the handlers)."""
    return problem_response(
        request,
        problem.status,
        problem.title,
        problem.detail,
        type_=problem.type,
        errors=problem.errors,
        headers=problem.headers,
        extensions=problem.extensions,
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
        return render_problem(request, exc)

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        return render_problem(request, _service_problem(exc))

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
        if exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            # FastAPI's running cap of a (chunked) body: the same problem as a declared oversized one.
            return render_problem(request, body_too_large(request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)))
        status = HTTPStatus(exc.status_code)
        # Keeps headers such as `Allow` (405) and `WWW-Authenticate` (401).
        return problem_response(request, status, status.phrase, str(exc.detail), headers=exc.headers)

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        return problem_response(request, status, status.phrase, "an unexpected error occurred")

    app.add_exception_handler(ApiProblem, on_api_problem)
    for refusal in (ServiceError, KeyReused, KeyInFlight, InvalidCursor, ReplayError):
        app.add_exception_handler(refusal, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be read, or a missing or malformed header.",
    401: "No valid API key: send `Authorization: Bearer <key>`.",
    403: "The API key lacks the scope this operation needs.",
    404: "No such resource.",
    409: "Conflicts with the current state of the resource.",
    413: "The request body is larger than the API accepts (`API_MAX_BODY_BYTES`).",
    422: "The request is not valid; `errors` locates each problem.",
    429: "Too many requests from this API key: retry after `Retry-After` seconds.",
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


def document_edge_refusals(openapi: dict[str, Any]) -> dict[str, Any]:
    """Document what the edge answers before a route runs: 413 where a body is accepted, 429 where an
    API key is needed (see `api.edge`)."""
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": _DESCRIPTIONS[413], "content": problem})
            if operation.get("security"):
                responses.setdefault(
                    "429",
                    {
                        "description": _DESCRIPTIONS[429],
                        "headers": {
                            "Retry-After": {
                                "description": "Seconds until the key may call again.",
                                "schema": {"type": "integer"},
                            }
                        },
                        "content": problem,
                    },
                )
    return openapi
