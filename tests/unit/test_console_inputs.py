"""The console's pure input handling: where sign-in returns to from a fragment, the time filters' bounds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from api.console.app import return_to
from api.console.routes.forms import blank_is_none, time_bound

pytestmark = pytest.mark.unit


def request(path: str, query: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "console.test", **(headers or {})}.items()]
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "headers": raw}
    scope |= {"scheme": "http", "server": ("console.test", 80)}
    return Request(scope)


@pytest.mark.parametrize(
    ("path", "query", "headers", "expected"),
    [
        ("/console/orders", "status=SHIPPED", {}, "/console/orders?status=SHIPPED"),
        ("/console/health/live", "", {}, "/console/health"),
        ("/console/orders/o-1/live", "", {}, "/console/orders/o-1"),
        # htmx names the page it is on: used when it is a console page of this site.
        (
            "/console/health/live",
            "",
            {"HX-Request": "true", "HX-Current-URL": "http://console.test/console/health?x=1"},
            "/console/health?x=1",
        ),
        (
            "/console/replays/r-1/live",
            "",
            {"HX-Request": "true", "HX-Current-URL": "http://evil.example/console/orders"},
            "/console/replays/r-1",
        ),
        (
            "/console/health/live",
            "",
            {"HX-Request": "true", "HX-Current-URL": "http://console.test/docs"},
            "/console/health",
        ),
        # Without HX-Request the header is not htmx's: ignored.
        (
            "/console/health/live",
            "",
            {"HX-Current-URL": "http://console.test/console/orders"},
            "/console/health",
        ),
    ],
)
def test_sign_in_returns_to_the_page_not_the_fragment(
    path: str, query: str, headers: dict[str, str], expected: str
) -> None:
    assert return_to(request(path, query, headers)) == expected


def test_a_range_s_end_is_inclusive_to_the_second_and_its_start_exact() -> None:
    assert time_bound("to", "2026-11-30T12:00:05", end=True) == datetime(2026, 11, 30, 12, 0, 6, tzinfo=UTC)
    # A browser omits ":00" seconds: still the whole second named.
    assert time_bound("to", "2026-11-30T12:00", end=True) == datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)
    assert time_bound("from", "2026-11-30T12:00:05") == datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC)
    assert time_bound("from", "2026-11-30T13:00:05+01:00") == datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC)
    assert (
        time_bound("from", "") is None
        and time_bound("from", "  ") is None
        and time_bound("from", None) is None
    )


@pytest.mark.parametrize("value", ["garbage", "2026-13-01T00:00", "30/11/2026", "2026-11-30T25:00"])
def test_a_time_that_is_not_one_is_refused_with_its_field(value: str) -> None:
    with pytest.raises(RequestValidationError) as refused:
        time_bound("created_from", value)
    (error,) = refused.value.errors()
    assert error["loc"] == ("query", "created_from") and "not a time" in error["msg"]


def test_a_blank_form_field_is_no_value() -> None:
    assert blank_is_none("") is None and blank_is_none("  ") is None
    assert blank_is_none("SHIPPED") == "SHIPPED" and blank_is_none(None) is None
