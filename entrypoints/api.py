"""`python -m entrypoints.api`: serve the HTTP API with uvicorn on API_HOST:API_PORT (127.0.0.1:8000)."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from api.app import create_app
from api.security import uses_development_key
from entrypoints.process import command_line
from infra.settings import load_settings
from observability import tracing
from observability.counters import start_work_counters
from observability.logs import configure_logging


def main() -> None:
    command_line("python -m entrypoints.api", __doc__).parse_args()
    try:
        settings = load_settings()
    except ValidationError as err:
        print(f"api: refusing to start, the settings are not valid:\n{err}", file=sys.stderr)
        raise SystemExit(2) from err
    if not settings.api_keys:
        print("api: refusing to start, API_KEYS is empty: nobody could call the API", file=sys.stderr)
        raise SystemExit(2)
    configure_logging(settings)
    tracing.configure_tracing(settings, "api")
    start_work_counters(settings, "api")
    url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"Order API: {url}  (docs: {url}/docs)", flush=True)
    if uses_development_key(settings):
        print(f"Development API key (all scopes): {settings.DEVELOPMENT_API_KEY}", flush=True)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            # X-Forwarded-Proto from these proxies makes a request https (the console's Secure cookie).
            forwarded_allow_ips=settings.forwarded_allow_ips,
            # Keep the process's logging (format, correlation ids): uvicorn's loggers go to the root.
            log_config=None,
        )
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
