"""Validation errors become located field errors: where in the request, and a JSON Pointer (no I/O)."""

from __future__ import annotations

import pytest

from api.problems import FieldError, field_errors, use_problem_media_type

pytestmark = pytest.mark.unit


def test_body_errors_get_a_json_pointer_and_parameters_a_name() -> None:
    errors = field_errors(
        [
            {"loc": ("body", "items", 0, "quantity"), "msg": "too big", "type": "less_than_equal"},
            {"loc": ("body", "a/b~c"), "msg": "odd", "type": "extra_forbidden"},
            {"loc": ("query", "limit"), "msg": "too big", "type": "less_than_equal"},
            {"loc": ("body", 17), "msg": "JSON decode error", "type": "json_invalid"},
        ]
    )

    assert errors == [
        FieldError(
            location="body",
            name="items.0.quantity",
            pointer="/items/0/quantity",
            detail="too big",
            code="less_than_equal",
        ),
        FieldError(location="body", name="a/b~c", pointer="/a~1b~0c", detail="odd", code="extra_forbidden"),
        FieldError(location="query", name="limit", pointer=None, detail="too big", code="less_than_equal"),
        # A character offset into the text is not a field: the whole body is pointed at.
        FieldError(location="body", name="body", pointer="", detail="JSON decode error", code="json_invalid"),
    ]


def test_error_responses_are_documented_as_problem_json() -> None:
    document = {
        "paths": {
            "/x": {
                "get": {
                    "responses": {
                        "200": {"content": {"application/json": {"schema": {"title": "ok"}}}},
                        "404": {"content": {"application/json": {"schema": {"title": "problem"}}}},
                    }
                }
            }
        }
    }

    responses = use_problem_media_type(document)["paths"]["/x"]["get"]["responses"]

    assert list(responses["200"]["content"]) == ["application/json"]
    assert responses["404"]["content"] == {"application/problem+json": {"schema": {"title": "problem"}}}
