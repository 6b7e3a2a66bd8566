"""The service's one configuration object, read from the environment (and `.env`) and validated at start."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Fields that are URLs which may carry a password: shown with the password masked (repr, str, errors).
_URL_FIELDS = ("database_url", "rabbitmq_url")


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a secret (a URL with its password, a key).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True)

    env: Environment = Environment.DEVELOPMENT
    log_level: str = "INFO"

    # Embedded default: a SQLite file beside the checkout. PostgreSQL: postgresql+asyncpg://... with libpq's
    # TLS parameters in the query if wanted (sslmode, sslrootcert, sslcert, sslkey; see infra/db.py).
    database_url: str = "sqlite+aiosqlite:///./var/orders.db"
    # Replaces the password of DATABASE_URL, so the URL can live in plain configuration and this in a secret.
    database_password: SecretStr | None = None
    database_echo: bool = False

    # --- temporal: where and how every process (API, worker, timeline, CLI) connects. The names are the
    # Temporal CLI's own environment variables, so the CLI (the compose setup job) reads the same values.
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "orders"
    # Where operators open the Temporal Web UI (links printed by `make run` and the demo; the local
    # stack's dev server serves it on this port).
    temporal_ui_url: str = "http://127.0.0.1:8233"
    # TLS with the system's CAs; implied by any option below (as the Temporal CLI does).
    temporal_tls: bool = False
    # PEM of the CA that signed the server's certificate (a self-hosted cluster's own CA), by path or inline.
    temporal_tls_server_ca_cert_path: Path | None = None
    temporal_tls_server_ca_cert_data: str | None = None
    # mTLS: the client certificate and its key (both or neither), by path or inline PEM.
    temporal_tls_client_cert_path: Path | None = None
    temporal_tls_client_cert_data: str | None = None
    temporal_tls_client_key_path: Path | None = None
    temporal_tls_client_key_data: SecretStr | None = None
    # The name the server's certificate must carry, when it differs from the address's host.
    temporal_tls_server_name: str | None = None
    # Temporal Cloud style API-key authentication (sent as a bearer token; TLS is on with it).
    temporal_api_key: SecretStr | None = None

    # TLS: amqps://host:5671/?cafile=/path/ca.pem (&certfile=...&keyfile=... for mTLS), read by aiormq.
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Replaces the password of RABBITMQ_URL (kept apart from the URL, in a secret).
    rabbitmq_password: SecretStr | None = None

    # Seconds in-flight activities may run on after a shutdown signal before they are cancelled.
    worker_shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 10.0
    # Run workflow code in the SDK's sandbox (a fresh module namespace per workflow run, restricted
    # calls). Off: about 17 ms less worker CPU per saga (README, "Changing the workflow safely"); the replay
    # tests keep the sandbox on, so CI still catches non-deterministic workflow code.
    workflow_sandbox: bool = False
    # Artificial latency of the built-in simulated payment provider (demos, kill tests).
    simulated_payment_latency_ms: Annotated[int, Field(ge=0, le=60_000)] = 0

    # --- events: outbox relay, broker topology, reactors, SMTP
    # Prefix of the exchange and queue names (tests use a unique one each for isolation).
    broker_namespace: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=60)] = "orders"
    # Upper bound of every single broker call (connect, declare, publish, ack, close).
    broker_call_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Longest pause between two reconnection attempts after the broker went away.
    broker_reconnect_max_seconds: Annotated[float, Field(gt=0)] = 5.0
    outbox_batch_size: Annotated[int, Field(ge=1, le=1_000)] = 100
    # The relay wakes on PostgreSQL NOTIFY at once; this poll is only the safety net there.
    outbox_poll_interval_seconds: Annotated[float, Field(gt=0)] = 2.0
    # SQLite has no NOTIFY: a short poll of the pending-rows index keeps the publish lag small.
    outbox_sqlite_poll_interval_seconds: Annotated[float, Field(gt=0)] = 0.1
    reactor_prefetch: Annotated[int, Field(ge=1, le=1_000)] = 128
    # Most messages a reactor handles in one transaction (a batch is what has arrived; it never waits).
    reactor_batch_size: Annotated[int, Field(ge=1, le=1_000)] = 64
    # Handler attempts (first try included) before a transiently failing message is dead-lettered.
    reactor_max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    # Wait before retry n (the last value repeats); one TTL wait queue per value. JSON list in the env.
    reactor_retry_delays_ms: Annotated[
        list[Annotated[int, Field(ge=10, le=86_400_000)]], Field(min_length=1)
    ] = [
        1_000,
        5_000,
        30_000,
    ]
    # Quorum-queue x-delivery-limit: redeliveries (consumer crashes) before the broker dead-letters.
    reactor_delivery_limit: Annotated[int, Field(ge=1, le=1_000)] = 20
    reactor_shutdown_timeout_seconds: Annotated[float, Field(ge=0)] = 10.0
    # A retry whose wait queue never handed it back (the broker drops an at-most-once dead-letter when the
    # reactor's queue has no leader, e.g. right after a restart) is re-driven from the outbox once it is
    # this long overdue (past its wait queue's TTL); the sweep looks this often (reactors/runtime/recovery).
    reactor_retry_lost_after_seconds: Annotated[float, Field(gt=0)] = 60.0
    reactor_retry_sweep_interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, Field(ge=1, le=65_535)] = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_start_tls: bool = False
    smtp_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    smtp_sender: str = "Order Saga <orders@example.com>"
    # A mail claimed by one notifier is left alone by others this long (it is being sent).
    notification_send_lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    # SMTP connections the notification reactor keeps open (mails of a wave in flight at once).
    notification_smtp_connections: Annotated[int, Field(ge=1, le=64)] = 4
    # Where the local SMTP sink (`python -m entrypoints.smtp_sink`) stores what it receives.
    smtp_sink_maildir: str = "var/mail"

    # --- retention: what the service deletes after how long (infra/retention.py, run by a Temporal Schedule).
    # Published outbox rows (pending rows are never deleted).
    retention_outbox_days: Annotated[float, Field(gt=0)] = 30.0
    # Inbox rows: the deduplication of redelivered events; kept at least as long as the outbox rows.
    retention_inbox_days: Annotated[float, Field(gt=0)] = 30.0
    # The reactors' delivery ledger (the timeline's audit of each delivery).
    retention_deliveries_days: Annotated[float, Field(gt=0)] = 30.0
    # Finished API Idempotency-Keys (completed or retryable; keys in flight stay).
    retention_idempotency_days: Annotated[float, Field(gt=0)] = 7.0
    # Sent notifications, their bodies with them (mails still being sent stay).
    retention_notifications_days: Annotated[float, Field(gt=0)] = 90.0
    # Rows deleted per transaction: short transactions that never hold the hot path's locks for long.
    retention_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    # Pause between two batches, so that writers of the hot path get the database in between.
    retention_batch_pause_ms: Annotated[int, Field(ge=0, le=60_000)] = 20
    # How often the schedule runs the retention; 0: the worker registers no schedule (the CLI still works).
    retention_interval_minutes: Annotated[float, Field(ge=0)] = 60.0

    # --- api: HTTP server and API keys
    # The documented key of the local stack; the service refuses to start with it when ENV=production.
    DEVELOPMENT_API_KEY: ClassVar[str] = "dev-orders-api-key-not-for-production"
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65_535)] = 8000
    # Proxies whose X-Forwarded-Proto/-For uvicorn trusts (comma-separated addresses or networks, `*`: any):
    # behind a proxy elsewhere than on localhost, name it so https is seen (the console's Secure cookie).
    forwarded_allow_ips: str = "127.0.0.1"
    # The API (and its console) as operators' browsers reach it: the saga links the order's console page
    # from the Temporal Web UI (<API_PUBLIC_URL>/console/orders/<id>).
    api_public_url: str = "http://127.0.0.1:8000"
    # Bearer keys by principal, the caller's name (Idempotency-Keys are scoped to it). JSON in the env.
    api_keys: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")],
        Annotated[SecretStr, Field(min_length=16, max_length=200)],
    ] = {"local-developer": SecretStr(DEVELOPMENT_API_KEY)}
    # What each principal of API_KEYS may do. JSON in the env.
    api_key_scopes: dict[str, list[Literal["orders:read", "orders:write", "admin"]]] = {
        "local-developer": ["orders:read", "orders:write", "admin"]
    }
    # A request that died mid-way keeps its Idempotency-Key busy this long; then a retry takes over.
    api_idempotency_lease_seconds: Annotated[float, Field(gt=0, le=3_600)] = 30.0
    # Upper bound of each /readyz check (database, Temporal, broker).
    api_readiness_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    # How long the API waits at start for a Temporal server that is still booting beside it.
    api_temporal_connect_seconds: Annotated[float, Field(ge=0, le=600)] = 60.0
    # Largest request body the API reads, in bytes: 413 beyond it (from Content-Length before reading,
    # or once a chunked body passes it). The API relies on no proxy for this.
    api_max_body_bytes: Annotated[int, Field(ge=1_024, le=1_073_741_824)] = 1_048_576
    # Requests per API key (principal) and API process, as `limits` rate strings separated by `;`
    # ("50/second;2000/minute"): 429 with Retry-After beyond. Empty: no limit (development, tests, demo).
    api_rate_limit: Annotated[
        str,
        Field(
            pattern=r"^(\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*)?"
            r"(;\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*)*$"
        ),
    ] = ""

    # --- console: the operator console at /console (api/console)
    # How long a console sign-in lasts, in minutes (then the operator signs in again). The sessions are
    # rows in the database (shared by every API replica, revoked at sign-out): no signing secret.
    console_session_minutes: Annotated[float, Field(gt=0, le=10_080)] = 480.0

    # --- observability: logs, traces, metrics
    # `json`: one JSON object per line with order, workflow, event and trace ids where known.
    log_format: Literal["text", "json"] = "text"
    # Tracing is off unless an exporter is chosen. Not named OTEL_*: the Temporal dev server reads those
    # from the same environment (make run) and refuses to start with OTEL_TRACES_EXPORTER=console.
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    # OTLP over HTTP, base URL: spans go to <endpoint>/v1/traces.
    tracing_otlp_endpoint: str = "http://127.0.0.1:4318"
    # Each process reports as <name>-<component> (order-saga-api, order-saga-worker, ...).
    tracing_service_name: Annotated[str, Field(min_length=1, max_length=100)] = "order-saga"
    # Prometheus /metrics of the worker, relay and reactors (the API serves GET /metrics); 0 = not served.
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 9101
    relay_metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 9102
    reactors_metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 9103
    # The Temporal SDK's own metrics (worker: task latencies, polls, failures), host:port; empty = off.
    temporal_metrics_address: str = "127.0.0.1:9100"
    # How often the relay counts pending outbox rows and each reactor reads its DLQ depth, for the gauges.
    metrics_refresh_seconds: Annotated[float, Field(gt=0, le=3_600)] = 5.0
    # Benchmark instrumentation, off when empty: each process counts its database transactions and round
    # trips (and the SMTP sink its replies) and writes them to <dir>/<pid>.json (observability/counters.py).
    work_counters_dir: str = ""

    @model_validator(mode="before")
    @classmethod
    def _no_default_keys_in_production(cls, data: Any) -> Any:
        """No default principal in production: the API refuses to start without keys of its own, and the
        other processes need none."""
        if isinstance(data, dict) and data.get("env") == Environment.PRODUCTION and "api_keys" not in data:
            return {**data, "api_keys": {}, "api_key_scopes": data.get("api_key_scopes", {})}
        return data

    @model_validator(mode="before")
    @classmethod
    def _passwords_into_urls(cls, data: Any) -> Any:
        """DATABASE_PASSWORD / RABBITMQ_PASSWORD, when given, become the password of their URL."""
        if not isinstance(data, dict):
            return data
        for url_field, password_field in (
            ("database_url", "database_password"),
            ("rabbitmq_url", "rabbitmq_password"),
        ):
            password = data.get(password_field)
            if password is None:
                continue
            secret = password.get_secret_value() if isinstance(password, SecretStr) else str(password)
            url = str(data.get(url_field, cls.model_fields[url_field].default))
            data = {**data, url_field: with_password(url, secret)}
        return data

    @field_validator(
        "database_password",
        "rabbitmq_password",
        "temporal_tls_server_ca_cert_path",
        "temporal_tls_server_ca_cert_data",
        "temporal_tls_client_cert_path",
        "temporal_tls_client_cert_data",
        "temporal_tls_client_key_path",
        "temporal_tls_client_key_data",
        "temporal_tls_server_name",
        "temporal_api_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `VAR=` in an env file means "not set", not an empty path, name or key (which would turn TLS on).
        return None if value == "" else value

    @model_validator(mode="after")
    def _tls_options_consistent(self) -> Settings:
        pairs = (
            (
                "TEMPORAL_TLS_SERVER_CA_CERT",
                self.temporal_tls_server_ca_cert_path,
                self.temporal_tls_server_ca_cert_data,
            ),
            (
                "TEMPORAL_TLS_CLIENT_CERT",
                self.temporal_tls_client_cert_path,
                self.temporal_tls_client_cert_data,
            ),
            ("TEMPORAL_TLS_CLIENT_KEY", self.temporal_tls_client_key_path, self.temporal_tls_client_key_data),
        )
        for name, path, data in pairs:
            if path is not None and data is not None:
                raise ValueError(f"{name}_PATH and {name}_DATA are alternatives: set one")
        has_cert = (
            self.temporal_tls_client_cert_path is not None or self.temporal_tls_client_cert_data is not None
        )
        has_key = (
            self.temporal_tls_client_key_path is not None or self.temporal_tls_client_key_data is not None
        )
        if has_cert != has_key:
            raise ValueError("TEMPORAL_TLS_CLIENT_CERT_* and TEMPORAL_TLS_CLIENT_KEY_* go together (mTLS)")
        return self

    @model_validator(mode="after")
    def _inbox_outlives_outbox(self) -> Settings:
        # An event whose outbox row is gone can only be published again by a fresh insert: the consumers'
        # inbox must still know it then.
        if self.retention_inbox_days < self.retention_outbox_days:
            raise ValueError("RETENTION_INBOX_DAYS must be at least RETENTION_OUTBOX_DAYS")
        return self

    @model_validator(mode="after")
    def _api_keys_usable(self) -> Settings:
        if set(self.api_keys) != set(self.api_key_scopes):
            raise ValueError("API_KEYS and API_KEY_SCOPES must name the same principals")
        secrets = [key.get_secret_value() for key in self.api_keys.values()]
        if len(set(secrets)) != len(secrets):
            raise ValueError("every principal in API_KEYS needs a key of its own")
        if self.env == Environment.PRODUCTION and self.DEVELOPMENT_API_KEY in secrets:
            raise ValueError("ENV=production refuses the documented development API key: configure API_KEYS")
        return self

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "DATABASE_URL must use sqlite+aiosqlite:// or postgresql+asyncpg://, got " + masked_url(url)
            )
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def temporal_uses_tls(self) -> bool:
        """TLS to Temporal: asked for, or implied by a CA, a client certificate, a server name, an API key."""
        return self.temporal_tls or any(
            value is not None
            for value in (
                self.temporal_tls_server_ca_cert_path,
                self.temporal_tls_server_ca_cert_data,
                self.temporal_tls_client_cert_path,
                self.temporal_tls_client_cert_data,
                self.temporal_tls_server_name,
                self.temporal_api_key,
            )
        )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # SecretStr fields print as '**********' already; URLs are plain strings that may hold a password.
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name in _URL_FIELDS and isinstance(value, str) else value


def masked_url(url: str) -> str:
    """The URL with its password, if any, replaced by `***` (for logs, errors and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def with_password(url: str, password: str) -> str:
    """The URL with `password` as its password (percent-encoded; the user name is kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; overrides win over the environment (tests, CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
