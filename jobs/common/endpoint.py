"""A worker's own HTTP endpoint (`METRICS_PORT`): `/metrics`, `/livez` and `/readyz`.

Workers may run on other hosts than the web, and each host's horses write their metrics files
there, so each worker is scraped where it runs. The endpoint answers from a thread of the
worker's parent process (the horses inherit the socket but never accept on it). Nothing secret
is served: counts, and the names of what is down.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jobs.common.metrics import CONTENT_TYPE, exposition
from jobs.common.settings import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], object]  # raises when what it checks is unreachable


def readiness(checks: Mapping[str, Check]) -> tuple[int, dict]:
    """200 when every check passes, else 503 naming each that failed (and the error's type)."""
    down = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # any failure of a dependency means not ready
            down[name] = type(exc).__name__
    if down:
        return 503, {"status": "not ready", "down": down}
    return 200, {"status": "ready"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass  # a scrape every few seconds is not news

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, exposition(), CONTENT_TYPE)
        elif path == "/livez":
            self._json(200, {"status": "alive"})
        elif path == "/readyz":
            self._json(*readiness(self.server.checks))
        else:
            self._json(404, {"error": "not found: /metrics, /livez or /readyz"})

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    checks: Mapping[str, Check]


def serve_endpoint(host: str, port: int, checks: Mapping[str, Check]) -> _Server:
    """Listen on `host:port` from a daemon thread until the process exits; the server.
    ConfigError when the address cannot be had (taken, or not this host's)."""
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_HOST:METRICS_PORT {host}:{port}: {exc.strerror or exc}"
        ) from None
    server.checks = checks
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics, /livez and /readyz on %s:%d", host, server.server_address[1])
    return server
