"""deploy/healthcheck.py, the probe of the app containers."""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import socket
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.deploy.stack_files import HEALTHCHECK_SCRIPT, static


def load_healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the healthcheck script -------------------------------------------------------------------------------

_PROC_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 1 1
   1: 0200000A:C350 0300000A:1628 01 00000000:00000000 00:00000000 00000000 10001        0 2 1
   2: 0200000A:C351 0300000A:1C31 06 00000000:00000000 00:00000000 00000000 10001        0 3 1
"""


@static
def test_healthcheck_reads_established_remote_ports_from_proc_net_tcp(tmp_path: Path) -> None:
    health = load_healthcheck_module()
    # 0x1628 = 5672 established; 0x1C31 = 7217 in TIME_WAIT; 0x1538 = 5432 is a listening socket.
    assert health.remote_ports(_PROC_TABLE) == {5672}
    table = tmp_path / "tcp"
    table.write_text(_PROC_TABLE)
    assert health.connected([5672], tables=[table, tmp_path / "absent"])
    assert not health.connected([5432, 7217], tables=[table])


@static
def test_healthcheck_sees_a_live_connection_of_this_process() -> None:
    health = load_healthcheck_module()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert not health.connected([port])
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            assert health.connected([port])
            assert health.main(["connected", str(port)]) == 0
    assert health.main(["connected", "not-a-port"]) == 2
    assert health.main(["ping"]) == 2


@static
def test_healthcheck_http_mode_wants_a_2xx() -> None:
    health = load_healthcheck_module()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert health.main(["http", f"{base}/healthz"]) == 0
        assert health.main(["http", f"{base}/readyz"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert health.main(["http", base + "/healthz"]) == 1  # nothing listens any more
