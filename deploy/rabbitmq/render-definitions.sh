#!/bin/sh
# Renders the definitions template with the passwords from the environment, then runs the given command
# (the image's own entrypoint). RabbitMQ does not expand variables in a definitions file, and the passwords
# must match the ones in the services' RABBITMQ_URL, which compose takes from the environment too.
#
#   DEFINITIONS_TEMPLATE (default /etc/rabbitmq/definitions.template.json): ${NAME} placeholders
#   DEFINITIONS_FILE     (default /etc/rabbitmq/definitions.json): what rabbitmq.conf imports at boot
set -eu

template=${DEFINITIONS_TEMPLATE:-/etc/rabbitmq/definitions.template.json}
target=${DEFINITIONS_FILE:-/etc/rabbitmq/definitions.json}

script=""
for name in $(grep -o '[$][{][A-Z0-9_]*[}]' "$template" | tr -d '${}' | sort -u); do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "render-definitions: $name is not set" >&2
        exit 1
    fi
    # The same value goes into amqp:// URLs unencoded and into JSON and sed unescaped: keep it plain.
    case $value in
        *[!A-Za-z0-9._~-]*)
            echo "render-definitions: $name may only contain A-Z a-z 0-9 . _ ~ -" >&2
            exit 1
            ;;
    esac
    script="${script}s|[\$][{]${name}[}]|${value}|g;"
done

umask 077
sed "$script" "$template" >"$target.tmp"
mv "$target.tmp" "$target"
# The broker runs as the rabbitmq user once the image's entrypoint steps down from root.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown rabbitmq:rabbitmq "$target"
fi
exec "$@"
