"""What the Bedrock and Vertex stand-ins share: a threaded HTTP server that checks the cloud's
credential, then has the scripted Anthropic stand-in (tests/standins/anthropic.py) answer.

A cloud stand-in holds its own `AnthropicStandIn` as `api`: tests script it as they would the
Messages API (`bedrock.api.script([...])`), and the real CLI follows the script through the
cloud's envelope. The cloud's part is the request's path and credential, checked as the cloud
checks them, and the encoding of the answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.standins.anthropic import AnthropicStandIn


@dataclass
class CloudRequest:
    """A request the cloud stand-in received, and whether its credential passed."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    accepted: bool = False
    refusal: str = ""
    received: list[str] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass

    def __getattr__(self, name: str) -> Callable[[], None]:
        # The stdlib looks up do_<METHOD>: every method goes to the stand-in.
        if name.startswith("do_"):
            return lambda: self.server.standin.handle(self)
        raise AttributeError(name)

    def body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: CloudStandIn


class CloudStandIn:
    """The server, its scripted model (`api`) and what it received (`requests`)."""

    def __init__(self) -> None:
        self.api = AnthropicStandIn()
        self.requests: list[CloudRequest] = []
        self._lock = threading.Lock()
        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CloudStandIn:
        self.api.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.api.stop()

    def accepted(self) -> list[CloudRequest]:
        with self._lock:
            return [r for r in self.requests if r.accepted]

    def refused(self) -> list[CloudRequest]:
        with self._lock:
            return [r for r in self.requests if not r.accepted]

    def handle(self, h: Handler) -> None:
        request = CloudRequest(
            h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, h.body()
        )
        with self._lock:
            self.requests.append(request)
        self.serve(h, request)

    def serve(self, h: Handler, request: CloudRequest) -> None:
        raise NotImplementedError

    def ask_model(self, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
        """The scripted model's answer to a Messages request, streamed (the caller closes it)."""
        client = httpx.Client(timeout=httpx.Timeout(30, read=700))
        request = client.build_request("POST", self.api.url + path, json=body)
        answer = client.send(request, stream=True)
        answer.extensions["client"] = client
        return answer


def close(answer: httpx.Response) -> None:
    answer.close()
    answer.extensions["client"].close()


def sse_events(answer: httpx.Response) -> list[bytes]:
    """The `data:` of each event of an SSE answer, as it comes."""
    return [line[5:].strip().encode() for line in answer.iter_lines() if line.startswith("data:")]
