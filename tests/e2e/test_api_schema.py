"""Schemathesis over the app's own OpenAPI document: no input makes a 5xx, every answer is documented.

Valid and invalid requests are generated for every operation and sent, with a key holding every
scope, to the app on a real database and Temporal. Bounded (few examples, derandomized) to stay fast.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from infra.db import Database
from infra.settings import Settings
from tests.e2e.conftest import api_settings, auth

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION_AND_MODE = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def operation_of(result: Ok[Operation] | Err[Any]) -> Operation:
    if isinstance(result, Err):
        raise result.err()
    return result.ok()


def generation_modes(operation: Operation) -> list[schemathesis.GenerationMode]:
    """Valid requests for every operation; invalid ones wherever there is an input to get wrong."""
    inputs = (operation.path_parameters, operation.query, operation.headers, operation.body)
    if any(len(part) for part in inputs):
        return [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    return [schemathesis.GenerationMode.POSITIVE]


def test_generated_requests_get_documented_answers_and_never_a_server_error(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]
) -> None:
    base_settings, _ = database
    # No worker polls this queue: an order that got through would simply wait, harmlessly.
    app_settings = api_settings(
        base_settings.database_url,
        temporal_env,
        "orders-fuzz-" + uuid.uuid4().hex[:8],
        # Dead letters and replays reach the broker: a namespace of its own, with no queues at all.
        broker_namespace="fuzz-" + uuid.uuid4().hex[:8],
    )
    app = create_app(app_settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [operation_of(result) for result in schema.get_all_operations()]
    assert len(operations) == 25
    headers = auth("everything")
    try:
        # The client runs the app (and its lifespan) on an event loop of its own.
        with asgi.get_client(app) as client:  # type: ignore[arg-type]
            for operation in operations:
                for mode in generation_modes(operation):

                    @given(case=operation.as_strategy(generation_mode=mode))
                    @settings(
                        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                        deadline=None,
                        derandomize=True,
                        database=None,
                        phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                    def answers_as_documented(case: schemathesis.Case[Operation]) -> None:
                        case.call_and_validate(session=client, headers=headers, checks=CHECKS)

                    answers_as_documented()
    finally:
        asgi.shutdown_lifespans()
