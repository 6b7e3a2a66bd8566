"""OpenTelemetry tracing: off unless TRACING_EXPORTER names an exporter (console or otlp).

One provider per process, installed by `configure_tracing` (entrypoints) or `install` (tests, with an
in-memory exporter). Components ask `active()` whether to add instrumentation and `tracer()` for spans of
their own. Propagation (W3C `traceparent`) goes through the OpenTelemetry context, whatever the provider.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from infra.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The instrumentation scope of the service's own spans (relay publish, reactor handling).
INSTRUMENTATION_NAME = "order_saga"

_provider: TracerProvider | None = None


def build_tracer_provider(settings: Settings, component: str) -> TracerProvider | None:
    """The provider the settings ask for, or None when tracing is off. Installs nothing."""
    if settings.tracing_exporter == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"{settings.tracing_service_name}-{component}",
                "service.namespace": settings.tracing_service_name,
            }
        )
    )
    if settings.tracing_exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.tracing_otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def configure_tracing(settings: Settings, component: str) -> TracerProvider | None:
    """Install the configured provider for this process (also as OpenTelemetry's global one)."""
    provider = build_tracer_provider(settings, component)
    if provider is not None:
        install(provider)
        trace.set_tracer_provider(provider)
    return provider


def install(provider: TracerProvider | None) -> None:
    """Make `provider` this process's tracer provider; None turns tracing off again (tests)."""
    global _provider
    _provider = provider


def shutdown() -> None:
    """Flush and stop the installed provider (at process exit, so batched spans are not lost)."""
    if _provider is not None:
        _provider.shutdown()


def active() -> bool:
    return _provider is not None


def installed_provider() -> TracerProvider | None:
    return _provider


def tracer(name: str) -> trace.Tracer:
    return _provider.get_tracer(name) if _provider is not None else trace.NoOpTracer()


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, if there is a valid one."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) inside a traceparent, or None if it is not a valid one."""
    if not traceparent:
        return None
    span_context = trace.get_current_span(context_from({TRACEPARENT: traceparent})).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def context_from(headers: Mapping[str, object]) -> Context:
    """The trace context carried by message headers (AMQP values may arrive as bytes)."""
    carrier: dict[str, str] = {}
    for key in (TRACEPARENT, TRACESTATE):
        value = headers.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        if isinstance(value, str):
            carrier[key] = value
    return TraceContextTextMapPropagator().extract(carrier)


def propagation_headers() -> dict[str, str]:
    """W3C headers (`traceparent`, `tracestate`) carrying the current trace context to the next hop."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


def instrument_engine(engine: AsyncEngine) -> None:
    """One span per SQL statement of this engine, under whatever span is current."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeter

    usage = NoOpMeter("sqlalchemy").create_up_down_counter("db.client.connections.usage")
    # Per engine, unlike SQLAlchemyInstrumentor, which instruments the first engine of a process only.
    EngineTracer(tracer("opentelemetry.instrumentation.sqlalchemy"), engine.sync_engine, usage)  # type: ignore[no-untyped-call]


def instrument_app(app: FastAPI) -> None:
    """A server span per HTTP request, continuing a `traceparent` the caller sent."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls="healthz,readyz,metrics",
        exclude_spans=["receive", "send"],
    )


def temporal_interceptors() -> list[Any]:
    """Temporal client (and so worker) interceptors: spans for start, workflow, activities, with the context
    carried in Temporal headers, which the server keeps, so a restarted worker continues the same trace."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer("temporalio"))]


@contextmanager
def continue_trace(
    name: str, *, parent: Context, kind: trace.SpanKind, attributes: Mapping[str, str | int] | None = None
) -> Iterator[trace.Span]:
    """A span that continues `parent` (a context extracted from a message or a row). With tracing off,
    `parent` itself is made current, so its trace id still reaches the logs, the ledger and the next hop."""
    token = otel_context.attach(parent)
    try:
        if _provider is None:
            yield trace.get_current_span()
        else:
            with tracer(INSTRUMENTATION_NAME).start_as_current_span(
                name, kind=kind, attributes=dict(attributes or {})
            ) as span:
                yield span
    finally:
        otel_context.detach(token)
