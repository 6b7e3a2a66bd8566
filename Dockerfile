# syntax=docker/dockerfile:1
# One image for every component of the order service; docker-compose.yml picks the command per service
# (python -m entrypoints.api | entrypoints.worker | entrypoints.relay | entrypoints.reactors <name>,
# alembic upgrade head).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- builder: a wheel of the project, installed with its runtime dependencies (not the dev extra) into a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# .dockerignore keeps tests, local state and secrets out of the build context.
COPY . .
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install -c constraints.txt /wheels/*.whl

# --- runtime: the venv, the migrations and nothing else, run by an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed numeric uid/gid, so orchestrators can check "runAsNonRoot" without resolving names.
RUN groupadd --system --gid 10001 orders \
    && useradd --system --uid 10001 --gid orders --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin orders
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# The migrations job runs `alembic upgrade head` from /app.
COPY alembic.ini ./
COPY migrations/ migrations/
COPY deploy/healthcheck.py /opt/orders/healthcheck.py
USER 10001:10001
EXPOSE 8000
CMD ["python", "-m", "entrypoints.api"]
