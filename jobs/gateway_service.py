"""The gateway process (`python -m jobs.gateway_service`, the Procfile's `gateway:` line).

It alone holds the real model key. A worker asks it, over a control socket only the service's
user can reach, to open a per-session gateway (jobs/gateway.py) on a socket inside that
session's control directory, and to close it when the session ends. So neither the worker, which
runs git over hostile work trees, nor the sandbox ever holds the key; and a gateway whose worker
died is closed by the service once the session's deadline has passed.

Protocol: one JSON object per line, one answer per request, one request per connection.
  {"op": "open", "session": ID, "socket": PATH, "budget_usd": X|null, "expires_in": SECONDS}
      -> {"ok": true, "key": SESSION_KEY}
  {"op": "close", "session": ID}  -> {"ok": true, "usage": {...}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from app.config import GATEWAY_REQUIRED, ConfigError, Settings, load_settings
from app.logs import configure_logging
from jobs.gateway import ModelGateway
from jobs.redact import redactor

log = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"
GRACE = 60  # seconds a gateway outlives its session's deadline before the janitor closes it


class GatewayError(RuntimeError):
    """The gateway service refused or could not be reached."""


class _Control(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128
    service: GatewayService


class _Handler(socketserver.StreamRequestHandler):
    server: _Control

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline(64 * 1024) or b"{}")
            answer = self.server.service.handle(request)
        except (ValueError, TypeError, KeyError) as exc:
            answer = {"ok": False, "error": f"bad request: {type(exc).__name__}"}
        except GatewayError as exc:
            answer = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class GatewayService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.workspace_root.resolve()
        self._gateways: dict[str, tuple[ModelGateway, float]] = {}
        self._lock = threading.Lock()

    def handle(self, request: dict) -> dict:
        op, session = request["op"], str(request["session"])
        if op == "open":
            return self.open(session, Path(request["socket"]), request.get("budget_usd"),
                             float(request["expires_in"]))  # fmt: skip
        if op == "close":
            return {"ok": True, "usage": self.close(session)}
        raise GatewayError(f"unknown op {op!r}")

    def open(self, session: str, path: Path, budget_usd: float | None, expires_in: float) -> dict:
        # Only a session's own control directory: the protocol must not plant sockets elsewhere.
        resolved = path.parent.resolve() / path.name
        if path.name != SOCKET_NAME or self.root not in resolved.parents:
            raise GatewayError(f"sockets are opened only as {SOCKET_NAME} under WORKSPACE_ROOT")
        deadline = time.monotonic() + expires_in
        gateway = ModelGateway(
            resolved, self.settings.anthropic_base_url, self.settings.anthropic_api_key or "",
            budget_usd=budget_usd, expires_at=deadline,
        )  # fmt: skip
        gateway.__enter__()
        with self._lock:
            old = self._gateways.pop(session, None)
            self._gateways[session] = (gateway, deadline)
        if old:
            old[0].close()
        log.info("gateway opened for %s", session)
        return {"ok": True, "key": gateway.session_key}

    def close(self, session: str) -> dict:
        with self._lock:
            entry = self._gateways.pop(session, None)
        if entry is None:
            return {}
        entry[0].close()
        log.info("gateway closed for %s", session)
        return entry[0].usage.as_dict()

    def sweep(self) -> None:
        """Close gateways whose session is past its deadline (its worker may have died)."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s, (_, deadline) in self._gateways.items() if now > deadline + GRACE]
        for session in stale:
            self.close(session)


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    path = settings.gateway_socket
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    service = GatewayService(settings)
    old_umask = os.umask(0o177)  # the control socket: the service's own user only
    try:
        server = _Control(str(path), _Handler)
    finally:
        os.umask(old_umask)
    server.service = service
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("gateway service listening on %s", path)
    stop = stop or threading.Event()
    try:
        while not stop.wait(5):
            service.sweep()
    finally:
        server.shutdown()
        server.server_close()
        for session in list(service._gateways):
            service.close(session)
        path.unlink(missing_ok=True)


def _call(settings: Settings, request: dict, wait: float = 10.0) -> dict:
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(30)
                conn.connect(str(settings.gateway_socket))
                conn.sendall(json.dumps(request).encode() + b"\n")
                answer = json.loads(conn.makefile("rb").readline() or b"{}")
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() > deadline:  # the service may still be starting
                raise GatewayError(f"the gateway service is not running ({exc.strerror})") from None
            time.sleep(0.2)
    if not answer.get("ok"):
        raise GatewayError(answer.get("error") or "the gateway service refused")
    return answer


@contextlib.contextmanager
def session_gateway(settings: Settings, session: str, path: Path, budget_usd: float | None,
                    expires_in: float) -> Iterator[str]:  # fmt: skip
    """Open the session's gateway in the gateway process; yields the per-session key."""
    answer = _call(settings, {"op": "open", "session": session, "socket": str(path),
                              "budget_usd": budget_usd, "expires_in": expires_in})  # fmt: skip
    try:
        yield answer["key"]
    finally:
        with contextlib.suppress(GatewayError):
            _call(settings, {"op": "close", "session": session}, wait=2.0)


def main() -> int:
    try:
        settings = load_settings(*GATEWAY_REQUIRED)
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        return 2
    configure_logging(redactor.learn(settings))
    stop = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
