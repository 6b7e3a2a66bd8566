#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory (docker-entrypoint-initdb.d).
# One login role per consumer, each owning only its own databases; the superuser is left to operators.
#   orders   -> orders                          (the service: migrations job, api, worker, relay, reactors)
#   temporal -> temporal, temporal_visibility   (the Temporal server; auto-setup only creates the schemas)
# No `set -u`: the image may source this file into its own entrypoint shell.
set -e

if [ -z "${ORDERS_DB_PASSWORD:-}" ] || [ -z "${TEMPORAL_DB_PASSWORD:-}" ]; then
    echo "initdb: ORDERS_DB_PASSWORD and TEMPORAL_DB_PASSWORD must be set" >&2
    exit 1
fi

# psql variables (:'name') quote the passwords as SQL literals: no injection through the environment.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v orders_password="$ORDERS_DB_PASSWORD" \
    -v temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE orders LOGIN PASSWORD :'orders_password';
CREATE DATABASE orders OWNER orders;
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
SQL
