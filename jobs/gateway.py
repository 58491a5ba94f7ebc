"""The model gateway: the sandbox's only way out, and the only holder of the real model key.

Each session gets its own gateway on a Unix socket inside the session's control directory. The
container has no network at all; a relay in the image exposes the socket on its 127.0.0.1, and
the CLI is pointed there with a per-session key that is worthless once the session ends. The
gateway checks that key, lets through only the Messages endpoints the CLI needs, swaps in the real
key and streams the answer back unbuffered (server-sent events must arrive as they are made).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
    "accept-encoding", "x-api-key", "authorization",
}  # fmt: skip


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # A full Unix-socket backlog refuses at once (no SYN retry as with TCP); the CLI opens
    # several connections together.
    request_queue_size = 128
    gateway: ModelGateway


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("gateway: " + format, *args)

    def address_string(self) -> str:
        return "sandbox"

    def _error(self, status: int, kind: str, message: str) -> None:
        body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._error(403, "permission_error", "the gateway serves only the Messages API")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        gateway = self.server.gateway
        path = self.path.split("?", 1)[0]
        if path not in ALLOWED_PATHS:
            return self._error(403, "permission_error", "the gateway serves only the Messages API")
        presented = self.headers.get("x-api-key") or self.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if not hmac.compare_digest(presented.encode(), gateway.session_key.encode()):
            return self._error(401, "authentication_error", "invalid session key")
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["x-api-key"] = gateway.upstream_key
        headers["accept-encoding"] = "identity"
        answered = False
        try:
            with gateway.client.stream(
                "POST", gateway.upstream + self.path, content=body, headers=headers
            ) as upstream:
                answered = True
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in upstream.iter_raw():
                    self.wfile.write(chunk)
                    self.wfile.flush()
        except httpx.HTTPError as exc:
            log.warning("gateway: upstream failed: %s", type(exc).__name__)
            if not answered:
                self._error(502, "api_error", "the model API could not be reached")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sandbox hung up (stopped or killed); nothing to answer

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))


class ModelGateway:
    """Serve the gateway for one session on `socket_path` until closed."""

    def __init__(self, socket_path: Path, upstream: str, upstream_key: str) -> None:
        self.socket_path = socket_path
        self.upstream = upstream.rstrip("/")
        self.upstream_key = upstream_key
        self.session_key = "ccgw-" + secrets.token_urlsafe(32)
        # Long read timeout: a streamed answer may pause while the model thinks.
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=600))
        self._server = _Server(str(socket_path), _Handler)
        self._server.gateway = self
        # The sandbox user must be able to connect; the directory around it is per session.
        os.chmod(socket_path, 0o666)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ModelGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.client.close()
        self.socket_path.unlink(missing_ok=True)
