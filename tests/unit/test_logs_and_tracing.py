"""Structured logs with correlation ids; the tracing switch and W3C context helpers. No I/O."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infra.settings import load_settings
from observability import tracing
from observability.logs import (
    CorrelationFilter,
    JsonFormatter,
    bind_log_context,
    configure_logging,
    log_context,
    log_handler,
)

pytestmark = pytest.mark.unit

ORDER = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON handler into a buffer."""
    stream = io.StringIO()
    handler = log_handler(load_settings(_env_file=None, log_format="json"))
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logger = logging.getLogger("test.observability.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def test_json_lines_carry_the_ids_bound_around_them(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    with log_context(workflow_id=f"order-{ORDER}"), log_context(event_id="e-1"):
        logger.info("published %s", "order.shipped.v1")
    logger.warning("outside")
    inside, outside = lines(stream)
    assert inside["message"] == "published order.shipped.v1" and inside["level"] == "INFO"
    assert (inside["order_id"], inside["workflow_id"], inside["event_id"]) == (ORDER, f"order-{ORDER}", "e-1")
    assert inside["logger"] == "test.observability.logs" and str(inside["time"]).endswith("+00:00")
    assert "order_id" not in outside and "trace_id" not in outside


def test_temporal_activity_info_and_explicit_extras_are_used(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    # What temporalio's activity logger attaches to each record.
    logger.info("charging", extra={"temporal_activity": {"workflow_id": f"order-{ORDER}", "attempt": 2}})
    logger.info("explicit", extra={"event_id": "e-9"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    activity, explicit, failed = lines(stream)
    assert (activity["order_id"], activity["workflow_id"]) == (ORDER, f"order-{ORDER}")
    assert explicit["event_id"] == "e-9"
    assert "RuntimeError: boom" in str(failed["exception"])


def test_the_trace_id_of_the_current_span_is_logged(
    captured: tuple[logging.Logger, io.StringIO], traced: InMemorySpanExporter
) -> None:
    logger, stream = captured
    with tracing.tracer("test").start_as_current_span("work") as span:
        logger.info("in a span")
        trace_id = format(span.get_span_context().trace_id, "032x")
    [record] = lines(stream)
    assert record["trace_id"] == trace_id


def test_ids_bound_in_a_task_stay_in_that_task(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    def request() -> None:  # what an HTTP request's task does: bind, log, end
        bind_log_context(order_id=ORDER)
        logger.info("in the request")

    contextvars.copy_context().run(request)
    logger.info("after it")
    inside, after = lines(stream)
    assert inside["order_id"] == ORDER and "order_id" not in after


def test_the_text_format_appends_the_ids() -> None:
    handler = log_handler(load_settings(_env_file=None, log_format="text"))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with log_context(order_id=ORDER):
        for log_filter in handler.filters:
            assert isinstance(log_filter, CorrelationFilter) and log_filter.filter(record)
    assert handler.format(record).endswith(f"INFO x hello order_id={ORDER}")
    assert isinstance(log_handler(load_settings(_env_file=None, log_format="json")).formatter, JsonFormatter)


def test_configure_logging_installs_one_root_handler_at_the_configured_level() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging(load_settings(_env_file=None, log_level="WARNING", log_format="json"))
        assert root.level == logging.WARNING
        assert [type(handler.formatter) for handler in root.handlers] == [JsonFormatter]
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_tracing_is_off_by_default_and_builds_the_configured_exporter() -> None:
    assert load_settings(_env_file=None).tracing_exporter == "none"
    assert tracing.build_tracer_provider(load_settings(_env_file=None), "api") is None
    console = tracing.build_tracer_provider(load_settings(_env_file=None, tracing_exporter="console"), "api")
    otlp = tracing.build_tracer_provider(load_settings(_env_file=None, tracing_exporter="otlp"), "relay")
    try:
        assert console is not None and otlp is not None
        assert console.resource.attributes["service.name"] == "order-saga-api"
        assert otlp.resource.attributes["service.name"] == "order-saga-relay"
    finally:
        for provider in (console, otlp):
            if provider is not None:
                provider.shutdown()
    assert not tracing.active()


def test_context_helpers_round_trip_a_traceparent(traced: InMemorySpanExporter) -> None:
    assert tracing.trace_id_of(TRACEPARENT) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of("garbage") is None and tracing.trace_id_of(None) is None
    # AMQP may hand header values over as bytes.
    parent = tracing.context_from({"traceparent": TRACEPARENT.encode()})
    with tracing.continue_trace("consume", parent=parent, kind=trace.SpanKind.CONSUMER):
        headers = tracing.propagation_headers()
        assert tracing.current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of(headers["traceparent"]) == "0af7651916cd43dd8448eb211c80319c"
    [span] = traced.get_finished_spans()
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"


def test_with_tracing_off_the_incoming_context_still_passes_through() -> None:
    assert not tracing.active()
    parent = tracing.context_from({"traceparent": TRACEPARENT})
    with tracing.continue_trace("consume", parent=parent, kind=trace.SpanKind.CONSUMER):
        assert tracing.propagation_headers()["traceparent"] == TRACEPARENT
        assert tracing.current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.current_traceparent() is None
