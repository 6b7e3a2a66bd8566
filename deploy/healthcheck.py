"""Container healthchecks for the order-saga image: stdlib only, since the slim image has no curl.

    python healthcheck.py http URL             the URL answers 2xx within TIMEOUT seconds
    python healthcheck.py connected PORT...    this container holds an established TCP connection to a PORT

`connected` is for the components without an HTTP endpoint. Each keeps one long-lived connection while it
works: the worker long-polls Temporal (7233), a reactor consumes from RabbitMQ (5672), the relay LISTENs on
PostgreSQL (5432). A process that lost that link and is stuck reconnecting turns unhealthy, which a mere "the
process exists" check would never show. /proc/net/tcp* lists the sockets of the container's network
namespace, which is exactly this one process (and its children).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

TIMEOUT = 5.0
# Kernel TCP state codes in /proc/net/tcp (include/net/tcp_states.h).
ESTABLISHED = "01"
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def remote_ports(table: str, state: str = ESTABLISHED) -> set[int]:
    """Remote ports of the sockets in `state` listed in one /proc/net/tcp{,6} table."""
    ports: set[int] = set()
    for line in table.splitlines()[1:]:  # the first line is the header
        fields = line.split()
        if len(fields) < 4 or fields[3] != state:
            continue
        _, _, port = fields[2].rpartition(":")  # rem_address is HEXIP:HEXPORT
        ports.add(int(port, 16))
    return ports


def connected(ports: Iterable[int], tables: Sequence[Path] = PROC_NET_TCP) -> bool:
    wanted = set(ports)
    for table in tables:
        try:
            text = table.read_text()
        except FileNotFoundError:  # no IPv6 in this namespace
            continue
        if wanted & remote_ports(text):
            return True
    return False


def http_ok(url: str, timeout: float = TIMEOUT) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        healthy = http_ok(argv[1])
    elif len(argv) >= 2 and argv[0] == "connected" and all(arg.isdigit() for arg in argv[1:]):
        healthy = connected(int(arg) for arg in argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if not healthy:
        print(f"unhealthy: {' '.join(argv)}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
