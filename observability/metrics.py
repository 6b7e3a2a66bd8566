"""Prometheus metrics: one set per process, created on first use (never at import time).

Saga-level metrics are counted by the client (placed) and by activities (completed, compensated, steps),
never inside workflow code, which must not do I/O. Each process serves them: the API at GET /metrics, the
worker, relay and reactors on their own port (`*_METRICS_PORT`, 0 = off). The Temporal SDK's metrics are
served by its core runtime on `TEMPORAL_METRICS_ADDRESS`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from infra.settings import Settings
from observability.logs import log_context

log = logging.getLogger(__name__)

# Sagas take from milliseconds (a refused order) to minutes (retries with backoff).
SAGA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# An event's age when a reactor gets it: publish lag plus broker wait, retries add seconds to minutes.
AGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


@dataclass(frozen=True)
class ServiceMetrics:
    orders_placed: Counter
    orders_completed: Counter
    orders_compensated: Counter
    saga_duration: Histogram
    step_failures: Counter
    step_retries: Counter
    step_duration: Histogram
    outbox_pending: Gauge
    outbox_oldest_pending_age: Gauge
    outbox_published: Counter
    outbox_publish_failures: Counter
    publish_confirm_latency: Histogram
    reactor_messages: Counter
    reactor_handling: Histogram
    reactor_event_age: Histogram
    reactor_dlq_depth: Gauge
    reactor_consuming: Gauge
    reactor_consumer_cancellations: Counter
    reactor_consumer_recoveries: Counter
    relay_queues_redeclared: Counter


@functools.cache
def metrics() -> ServiceMetrics:
    """This process's metrics, registered in prometheus_client's default registry on first use."""
    return ServiceMetrics(
        orders_placed=Counter("orders_placed", "Orders recorded and handed to their saga."),
        orders_completed=Counter("orders_completed", "Orders the saga took to SHIPPED."),
        orders_compensated=Counter(
            "orders_compensated",
            "Orders the saga undid and closed, by final status and reason.",
            ["status", "reason"],
        ),
        saga_duration=Histogram(
            "saga_duration_seconds",
            "From the order's placement to the saga's end, by outcome.",
            ["outcome"],
            buckets=SAGA_BUCKETS,
        ),
        step_failures=Counter(
            "saga_step_failures",
            "Failed attempts of saga steps (activities), by error type.",
            ["step", "error"],
        ),
        step_retries=Counter("saga_step_retries", "Attempts of saga steps after the first.", ["step"]),
        step_duration=Histogram(
            "saga_step_duration_seconds",
            "Duration of one attempt of a saga step.",
            ["step"],
            buckets=FAST_BUCKETS,
        ),
        outbox_pending=Gauge("outbox_pending_events", "Outbox rows not yet published."),
        outbox_oldest_pending_age=Gauge(
            "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row (0 when none)."
        ),
        outbox_published=Counter("outbox_published_events", "Outbox rows published and confirmed."),
        outbox_publish_failures=Counter(
            "outbox_publish_failures", "Publishes that failed, by kind (refused, broker).", ["kind"]
        ),
        publish_confirm_latency=Histogram(
            "outbox_publish_confirm_seconds",
            "From publish to the broker's confirm, per message.",
            buckets=FAST_BUCKETS,
        ),
        reactor_messages=Counter(
            "reactor_messages",
            "Messages handled by reactors, by outcome (processed, duplicate, retry, dead).",
            ["reactor", "outcome"],
        ),
        reactor_handling=Histogram(
            "reactor_handling_seconds",
            "Handling time of one message by a reactor, by outcome.",
            ["reactor", "outcome"],
            buckets=FAST_BUCKETS,
        ),
        reactor_event_age=Histogram(
            "reactor_event_age_seconds",
            "Age of an event (since its CloudEvents time) when a reactor receives it.",
            ["reactor", "event_type"],
            buckets=AGE_BUCKETS,
        ),
        reactor_dlq_depth=Gauge(
            "reactor_dlq_messages", "Messages in a reactor's dead-letter queue.", ["reactor"]
        ),
        reactor_consuming=Gauge(
            "reactor_consuming",
            "1 while a reactor consumes its queue, 0 while it reconnects or recovers (its readiness).",
            ["reactor"],
        ),
        reactor_consumer_cancellations=Counter(
            "reactor_consumer_cancellations",
            "Consumers of a reactor cancelled by the broker (basic.cancel: its queue deleted, say).",
            ["reactor"],
        ),
        reactor_consumer_recoveries=Counter(
            "reactor_consumer_recoveries",
            "Times a reactor consumed again (queue redeclared) after the broker cancelled its consumer.",
            ["reactor"],
        ),
        relay_queues_redeclared=Counter(
            "relay_queues_redeclared",
            "Reactor queues the relay found missing before or after a publish batch and declared again.",
            ["reactor"],
        ),
    )


def latest() -> tuple[bytes, str]:
    """The exposition of every metric of this process, and its content type."""
    metrics()  # every family is listed, even before its first count
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(settings: Settings, port: int) -> Any | None:
    """Serve /metrics on `port` (0: not at all); returns the server (call `shutdown()` to stop it)."""
    if port == 0:
        return None
    metrics()  # registered before the first scrape
    try:
        server, _thread = _start_http_server(port, addr=settings.metrics_host)
    except OSError as err:
        # Metrics are not worth refusing to work for (say, two reactor processes on one host).
        log.warning("cannot serve metrics on %s:%d: %s", settings.metrics_host, port, err)
        return None
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return server


def temporal_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving the SDK's own metrics in Prometheus format, if an address is set."""
    if not settings.temporal_metrics_address:
        return None
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=settings.temporal_metrics_address)
            )
        )
    except Exception as err:  # the address is taken or invalid: run without SDK metrics
        log.warning("cannot serve Temporal SDK metrics on %s: %s", settings.temporal_metrics_address, err)
        return None


class StepMetricsInterceptor(Interceptor):
    """Worker interceptor: per saga step (activity, local ones too) attempts, failures, retries, durations,
    and the order and workflow ids on every log record of the activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StepMetrics(next)


class _StepMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        step = info.activity_type
        measured = metrics()
        if info.attempt > 1:
            measured.step_retries.labels(step).inc()
        started = perf_counter()
        with log_context(workflow_id=info.workflow_id):
            try:
                return await super().execute_activity(input)
            except Exception as err:
                measured.step_failures.labels(step, error_type(err)).inc()
                raise
            finally:
                measured.step_duration.labels(step).observe(perf_counter() - started)


def error_type(err: BaseException) -> str:
    """A bounded label for an error: the business code of an ApplicationError, else the class name."""
    if isinstance(err, ApplicationError) and err.type:
        return err.type
    return type(err).__name__


def saga_ended(placed_at: datetime, final_status: str, reason: str | None = None) -> None:
    """Count a saga's end once, from the activity that committed its final status."""
    measured = metrics()
    if reason is None:
        measured.orders_completed.inc()
    else:
        measured.orders_compensated.labels(final_status, reason).inc()
    elapsed = (datetime.now(UTC) - placed_at).total_seconds()
    measured.saga_duration.labels(final_status.lower()).observe(max(elapsed, 0.0))
