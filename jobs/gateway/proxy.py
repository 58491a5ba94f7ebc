"""The model gateway: the sandbox's only way out, and the only holder of the model credential.

Each session gets its own gateway on a Unix socket inside the session's control directory. The
container has no network at all; a relay in the image exposes the socket on its 127.0.0.1, and
the CLI is pointed there with a per-session key that is worthless once the session ends. The
gateway checks that key, lets through only the model endpoints the CLI needs (which ones is the
backend's to say: the Messages API, Bedrock's invoke or Vertex's rawPredict, `jobs.gateway.
backends`), has the backend add the real credential, and streams the answer back unbuffered
(server-sent events and AWS event streams must arrive as they are made).

On the way through it reads the usage the API reports (`message_start` and `message_delta`
events of a stream, parsed as they pass, Bedrock's wrapped in its event-stream encoding; the
`usage` of a JSON answer), keeps a running total of
tokens and estimated cost (`jobs.gateway.pricing`), and refuses further requests once the session's
budget is spent. Its refusals are meant to end the CLI's run, not to be retried: each carries
`x-should-retry: false`, without which Claude Code (2.1.332) retries a 401 or 429 with backoff up
to CLAUDE_CODE_MAX_RETRIES times. A spent budget is `402 billing_error`, which the CLI never
retries and reports verbatim ("API Error: 402 <message>", `is_error: true`); an expired or
closed session is `401 authentication_error`; an oversized body `413 request_too_large`; a
model outside `allowed_models` `400 invalid_request_error` (which the CLI re-sends a few times
at once, then gives up).

Requests in flight when the budget runs out finish (and are counted), so a session can overshoot
its budget by what its concurrent requests cost. Each connection carries one request (HTTP/1.0
semantics, as before); a connection opened before `close()` is cut by it, and any request on one
after `close()` is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
from botocore.eventstream import EventStreamBuffer, ParserError

from jobs.common.redact import Redactor
from jobs.gateway import pricing
from jobs.gateway.backends import Backend, Route

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 20 * 1024 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much of a refused body
_MAX_EVENT_BYTES = 4 * 1024 * 1024  # an SSE line or event the usage parser will hold
_MAX_JSON_ANSWER = 16 * 1024 * 1024  # a JSON answer the usage parser will hold

# Requests of one session in the API at once; more wait their turn (the CLI's main loop and its
# subagents run side by side, so a refusal would end a subagent's work).
MAX_IN_FLIGHT = 4
_ADMISSION_WAIT = 300  # seconds a request waits for its turn before a 429
MIN_OUTPUT_TOKENS = 16  # below this the budget left pays for no useful answer: 402
# Beside requests already in flight, a request is admitted only if the budget left can pay for
# this much of its output on top of their worst case; else it waits for them to finish.
_PARALLEL_MIN_OUTPUT = 8192

# What Claude Code 2.1.332 sends (observed through the stand-in, tests/standins/anthropic.py),
# and the client-side features it asks for in other configurations: a 1M-token context, prompt
# caching scopes and TTLs, structured outputs, token counting. Nothing that has the API run a
# tool, fetch a URL, reach an MCP server or a container, or read stored files.
ALLOWED_BETAS = frozenset(
    {
        "claude-code-20250219",
        "interleaved-thinking-2025-05-14",
        "context-management-2025-06-27",
        "per-turn-control-2026-07-01",
        "mid-conversation-tool-changes-2026-07-01",
        "thinking-token-count-2026-05-13",
        "advanced-tool-use-2025-11-20",
        "effort-2025-11-24",
        "thinking-display-updates-2026-08-18",
        "context-1m-2025-08-07",
        "prompt-caching-scope-2026-01-05",
        "extended-cache-ttl-2025-04-11",
        "structured-outputs-2025-12-15",
        "token-counting-2024-11-01",
        "redact-thinking-2026-02-12",
    }
)
# The Messages API fields a client-tool conversation uses; `mcp_servers`, `container` and
# anything newer are not passed on.
_REQUEST_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "context_management",
        "output_config",
        "output_format",
    }
)
# Content blocks a client sends back; the server tools' blocks (server_tool_use,
# web_fetch_tool_result, mcp_tool_use, container_upload, ...) have no business here.
_CONTENT_BLOCKS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
# Sources the API reads from the request itself; `url` has it fetch, `file` reads stored files.
_INLINE_SOURCES = frozenset({"base64", "text", "content"})

# Never passed on, in either direction: connection-level headers and what we recompute.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# Never passed upstream: credentials of any shape, and claims about where the request came from.
_REQUEST_DROPPED = _HOP_BY_HOP | {
    "x-api-key",
    "authorization",
    "cookie",
    "accept-encoding",
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "client-ip",
    "cf-connecting-ip",
}
# Never passed back: we send the body decoded, and cookies have no business in the sandbox.
_RESPONSE_DROPPED = _HOP_BY_HOP | {"content-encoding", "set-cookie"}

_TOKEN_FIELDS = pricing.TOKEN_FIELDS


def _forwardable(name: str) -> bool:
    name = name.lower().replace("_", "-")  # some proxies read x_api_key as x-api-key
    return not (
        name in _REQUEST_DROPPED
        or name.startswith(("proxy-", "x-forwarded-"))
        or name.endswith(("-key", "-token", "-secret", "-authorization"))
        or "apikey" in name
    )


@dataclass(frozen=True)
class Usage:
    """Tokens the API reported for a session, and their estimated cost (`jobs.gateway.pricing`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    by_model: dict[str, Usage] = field(default_factory=dict)
    requests: int = 0  # model requests answered: the gateway's count of turns
    # Requests refused, by the error type of the answer (the worker's metrics count them).
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers, for the worker's report."""
        out = asdict(self)
        out["tokens"] = self.tokens
        out["by_model"] = {model: u.as_dict() for model, u in self.by_model.items()}
        return out

    def plus(self, tokens: dict[str, int], cost: float) -> Usage:
        return replace(
            self,
            **{k: getattr(self, k) + tokens.get(k, 0) for k in _TOKEN_FIELDS},
            cost_usd=self.cost_usd + cost,
        )


class _Refused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class _MessageTally:
    """The usage of one answer, reported cumulatively; adds each change to the session's total."""

    def __init__(self, gateway: ModelGateway, model: str) -> None:
        self.gateway = gateway
        self.model = model
        self.usage: dict[str, Any] = {}
        self.counted = dict.fromkeys(_TOKEN_FIELDS, 0)
        self.cost = 0.0

    def update(self, model: object, usage: object) -> None:
        if isinstance(model, str) and model:
            self.model = model
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if (key in _TOKEN_FIELDS and isinstance(value, int)) or (
                key == "cache_creation" and isinstance(value, dict)
            ):
                self.usage[key] = value
        counted = {k: pricing.count(self.usage, k) for k in _TOKEN_FIELDS}
        cost = pricing.cost_usd(self.model, self.usage)
        self.gateway._add(
            self.model, {k: counted[k] - self.counted[k] for k in _TOKEN_FIELDS}, cost - self.cost
        )
        self.counted, self.cost = counted, cost


class _SSEUsage:
    """Reads usage out of a server-sent event stream as it passes, holding only the current line."""

    _WANTED = ("message_start", "message_delta")

    def __init__(self, tally: _MessageTally) -> None:
        self.tally = tally
        self._line = bytearray()
        self._overlong = False
        self._event = ""
        self._data: list[bytes] = []
        self._data_size = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._line += chunk[start:end]
            if not self._overlong:
                self._field(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
            self._overlong = False
            start = end + 1
        if not self._overlong:
            self._line += chunk[start:]
            if len(self._line) > _MAX_EVENT_BYTES:  # no event we read is that big
                self._line.clear()
                self._overlong = True

    def close(self) -> None:
        self.feed(b"\n\n")

    def _field(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"data" and self._event in ("", *self._WANTED):
            self._data_size += len(value)
            if self._data_size <= _MAX_EVENT_BYTES:
                self._data.append(value)

    def _dispatch(self) -> None:
        data, event = self._data, self._event
        self._data, self._event, self._data_size = [], "", 0
        if not data:
            return
        try:
            payload = json.loads(b"\n".join(data))
        except ValueError:
            return
        _count_event(self.tally, payload, event)


def _count_event(tally: _MessageTally, payload: object, event: str = "") -> None:
    """Count the usage of one streamed event (the same events over SSE and AWS event streams)."""
    if not isinstance(payload, dict):
        return
    kind = payload.get("type") or event
    if kind == "message_start" and isinstance(payload.get("message"), dict):
        message = payload["message"]
        tally.update(message.get("model"), message.get("usage"))
    elif kind == "message_delta":
        tally.update(None, payload.get("usage"))


class _EventStreamUsage:
    """Reads usage out of Bedrock's AWS event stream as it passes: each message's payload is
    `{"bytes": base64(event JSON)}`, the event as the Messages API streams it. botocore decodes
    the frames (checking their CRCs) and holds at most one unfinished frame."""

    def __init__(self, tally: _MessageTally) -> None:
        self.tally = tally
        self._frames = EventStreamBuffer()
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        self._frames.add_data(chunk)
        try:
            for message in self._frames:
                self._count(message.payload)
        except ParserError as exc:  # the CLI gets the same bytes and fails on them too
            log.warning("gateway: unreadable event stream (%s); usage no longer read", exc)
            self._broken = True

    def _count(self, payload: bytes) -> None:
        try:
            wrapped = json.loads(payload)
            event = json.loads(base64.b64decode(wrapped["bytes"], validate=True))
        except (ValueError, TypeError, KeyError):
            return  # not a chunk (an exception message, metrics): nothing to count
        _count_event(self.tally, event)

    def close(self) -> None:
        pass


class _JSONUsage:
    """Keeps a copy of a JSON answer as it passes, and reads its usage at the end."""

    def __init__(self, tally: _MessageTally) -> None:
        self.tally = tally
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self._body) <= _MAX_JSON_ANSWER:
            self._body += chunk

    def close(self) -> None:
        if len(self._body) > _MAX_JSON_ANSWER:
            log.warning("gateway: answer too large to read its usage")
            return
        try:
            message = json.loads(self._body)
        except ValueError:
            return
        if isinstance(message, dict):
            self.tally.update(message.get("model"), message.get("usage"))


def _check_blocks(blocks: list[Any], depth: int = 0) -> None:
    """Refuse content blocks of server tools, and sources the API would fetch or look up."""
    if depth > 4:
        raise _Refused(400, "invalid_request_error", "content nested too deep")
    for block in blocks:
        if not isinstance(block, dict):
            raise _Refused(400, "invalid_request_error", "a content block must be an object")
        kind = block.get("type")
        if kind not in _CONTENT_BLOCKS:
            raise _Refused(
                400, "invalid_request_error", f"the gateway does not pass {str(kind)[:80]!r} blocks"
            )
        source = block.get("source")
        if kind in ("image", "document"):
            origin = source.get("type") if isinstance(source, dict) else None
            if origin not in _INLINE_SOURCES:
                raise _Refused(
                    400,
                    "invalid_request_error",
                    f"the gateway passes images and documents only inline, "
                    f"not by {str(origin)[:80]!r}",
                )
            if isinstance(content := source.get("content"), list):
                _check_blocks(content, depth + 1)
        if kind == "tool_result" and isinstance(content := block.get("content"), list):
            _check_blocks(content, depth + 1)


class _Body:
    """A request body as it is read: kept up to `limit` bytes, dropped up to `_DRAIN_LIMIT`."""

    def __init__(self, rfile: Any, limit: int) -> None:
        self.rfile = rfile
        self.limit = limit
        self.most = max(limit, _DRAIN_LIMIT)
        self.too_large = _Refused(413, "request_too_large", f"request body over {limit:,} bytes")
        self.parts: list[bytes] = []
        self.size = 0

    def take(self, n: int) -> None:
        while n > 0:
            piece = self.rfile.read(min(n, 1 << 20))
            if not piece:
                raise _Refused(400, "invalid_request_error", "the body ended early")
            self.size += len(piece)
            n -= len(piece)
            if self.size > self.most:
                raise self.too_large
            if self.limit and self.size <= self.limit:
                self.parts.append(piece)

    def take_chunked(self) -> None:
        while True:
            line = self.rfile.readline(1024)
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Refused(400, "invalid_request_error", "bad chunked encoding") from None
            if n < 0:
                raise _Refused(400, "invalid_request_error", "bad chunked encoding")
            if n == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            self.take(n)
            self.rfile.readline(1024)

    def kept(self) -> bytes:
        if self.limit and self.size > self.limit:
            raise self.too_large
        return b"".join(self.parts)


def _check_betas(betas: object, backend: Backend) -> None:
    """Refuse a beta outside the allowlist, whether asked for in a header or (Bedrock) the body."""
    if not isinstance(betas, list):
        raise _Refused(400, "invalid_request_error", "anthropic_beta must be a list")
    for beta in betas:
        if not isinstance(beta, str):
            raise _Refused(400, "invalid_request_error", "a beta must be a string")
        if beta and beta not in ALLOWED_BETAS and beta not in backend.extra_betas:
            raise _Refused(
                400, "invalid_request_error", f"the gateway does not pass the beta {beta[:80]!r}"
            )


def _json_object(body: bytes, extra_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body as a JSON object with none but the fields Claude Code sends (and those of the
    backend's own envelope, such as Bedrock's `anthropic_version`)."""
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        raise _Refused(400, "invalid_request_error", "the body is not a JSON object")
    if extra := sorted(set(request) - _REQUEST_FIELDS - extra_fields):
        raise _Refused(
            400,
            "invalid_request_error",
            f"the gateway does not pass the field {extra[0][:80]!r}",
        )
    return request


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _Refused(400, "invalid_request_error", "tools must be a list")
    for tool in tools:
        if not isinstance(tool, dict):
            raise _Refused(400, "invalid_request_error", "a tool must be an object")
        if tool.get("type", "custom") != "custom":  # the CLI's own tools carry no type
            raise _Refused(
                400,
                "invalid_request_error",
                f"the tool type {str(tool['type'])[:80]!r} runs on the API's side; "
                "the gateway passes only client tools",
            )


def _check_system(system: Any) -> None:
    if isinstance(system, list):
        _check_blocks(system)
    elif system is not None and not isinstance(system, str):
        raise _Refused(400, "invalid_request_error", "system must be text or a list of blocks")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _Refused(400, "invalid_request_error", "messages must be a list")
    for message in messages:
        if not isinstance(message, dict):
            raise _Refused(400, "invalid_request_error", "a message must be an object")
        if isinstance(content := message.get("content"), list):
            _check_blocks(content)
        elif not isinstance(content, str):
            raise _Refused(400, "invalid_request_error", "content must be text or blocks")


_Meter = _SSEUsage | _EventStreamUsage | _JSONUsage | None


class _CredentialFailed(Exception):
    """The backend could not produce its credential (a token refresh failed): a 502."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # A full Unix-socket backlog refuses at once (no SYN retry as with TCP); the CLI opens
    # several connections together.
    request_queue_size = 128
    gateway: ModelGateway

    def handle_error(self, request: object, client_address: object) -> None:
        # The stdlib prints the traceback to stderr; ours goes to the log, with secrets scrubbed.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | TimeoutError):
            log.debug("gateway: connection failed: %s", type(exc).__name__)
            return
        log.error("gateway: request failed\n%s", self.gateway._scrub(traceback.format_exc()))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A sandbox that stops reading (or sending) for this long is gone; don't hold a thread for it.
    timeout = 300
    _body_read = False

    def setup(self) -> None:
        super().setup()
        self.server.gateway._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.gateway._track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("gateway: %s", self.server.gateway._scrub(format % args))

    def address_string(self) -> str:
        return "sandbox"

    # -- refusing ------------------------------------------------------------------------

    def _refuse(self, status: int, kind: str, message: str) -> None:
        request = self.server.gateway._scrub(f"{self.command} {self._path()}"[:200])
        log.info("gateway: refused %s: %d %s", request, status, message)
        self.server.gateway._refused(kind)
        if not self._body_read:
            with contextlib.suppress(_Refused, OSError, ValueError):
                self._read_body(limit=0)  # drain, so the client reads the answer, not a reset
        body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-should-retry", "false")  # Claude Code retries 401/429 otherwise
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the sandbox hung up

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib's page echoes the request line back (it may hold a key): answer plainly.
        self._body_read = True  # a request we could not parse is not drained
        kind = "request_too_large" if code in (413, 414, 431) else "invalid_request_error"
        self._refuse(code, kind, HTTPStatus(code).phrase)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._refuse(403, "permission_error", "the gateway serves only the Messages API")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def _path(self) -> str:
        return (getattr(self, "path", None) or "").split("?", 1)[0]

    # -- the one thing it does -----------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        gateway = self.server.gateway
        try:
            body, request, route = self._admit(gateway)
            asked = request.get("max_tokens")
            model = (route.model or request["model"]) if route.metered else None
            reserved = gateway._enter(request, model, len(body))
        except _Refused as refusal:
            return self._refuse(refusal.status, refusal.kind, refusal.message)
        try:
            if request.get("max_tokens") != asked:  # lowered to what the budget left can pay
                body = json.dumps(request).encode()
            headers = []
            if gateway.backend.forwards_client_headers:
                headers = [(k, v) for k, v in self.headers.items() if _forwardable(k)]
            headers.append(("accept-encoding", "identity"))
            self._forward(gateway, body, headers, route)
        finally:
            gateway._leave(reserved)

    def _admit(self, gateway: ModelGateway) -> tuple[bytes, dict[str, Any], Route]:
        """The request's body, its parsed form and its route, once every check has passed;
        else `_Refused`."""
        if gateway.closed:
            raise _Refused(401, "authentication_error", "session closed")
        query = (getattr(self, "path", None) or "").partition("?")[2]
        route = gateway.backend.route(self._path(), query)
        if route is None:
            raise _Refused(403, "permission_error", "the gateway serves only the Messages API")
        presented = self.headers.get("x-api-key") or self.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if not hmac.compare_digest(presented.encode(), gateway.session_key.encode()):
            raise _Refused(401, "authentication_error", "invalid session key")
        if gateway.expired:
            raise _Refused(401, "authentication_error", "session expired")
        if spent := gateway.spent():
            raise _Refused(402, "billing_error", spent)
        body = self._read_body(limit=gateway.max_body_bytes)
        request = self._check_request(gateway, body, route)
        if gateway.closed:  # closed while the body arrived
            raise _Refused(401, "authentication_error", "session closed")
        return body, request, route

    def _check_request(self, gateway: ModelGateway, body: bytes, route: Route) -> dict[str, Any]:
        """The parsed body, if it asks only for what Claude Code needs; else `_Refused` (400)."""
        backend = gateway.backend
        self._check_framing(backend)
        request = _json_object(body, backend.body_fields)
        model = route.model or request.get("model")
        if not isinstance(model, str):
            raise _Refused(400, "invalid_request_error", "the body names no model")
        if gateway.allowed_models is not None:
            self._check_model(gateway, model)
        _check_betas(request.get("anthropic_beta", []), backend)
        if route.metered:
            tokens = request.get("max_tokens")
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
                raise _Refused(
                    400, "invalid_request_error", "max_tokens must be a positive integer"
                )
        _check_tools(request.get("tools", []))
        _check_system(request.get("system"))
        _check_messages(request.get("messages", []))
        return request

    def _check_framing(self, backend: Backend) -> None:
        """What comes around the body: its encoding and the betas asked for (the query is the
        backend's route to check)."""
        if self.headers.get("content-encoding", "identity").lower() != "identity":
            raise _Refused(415, "invalid_request_error", "compressed bodies are not accepted")
        for value in self.headers.get_all("anthropic-beta") or ():
            _check_betas([b.strip() for b in value.split(",")], backend)

    def _check_model(self, gateway: ModelGateway, model: str) -> None:
        assert gateway.allowed_models is not None
        if pricing.family(model) not in gateway.allowed_models:
            allowed = ", ".join(sorted(gateway.allowed_models))
            raise _Refused(
                400,
                "invalid_request_error",
                f"model {model[:100]!r} is not allowed in this session (allowed: {allowed})",
            )

    def _read_body(self, limit: int) -> bytes:
        """The whole body, or `_Refused` (413) past `limit` bytes; `limit=0` only drains it.

        A refused body is still read (and dropped) up to `_DRAIN_LIMIT`, so that the client
        gets to read the answer instead of a reset connection.
        """
        self._body_read = True
        chunked, declared = self._framing()
        body = _Body(self.rfile, limit)
        if declared > body.most:
            raise body.too_large
        if chunked:
            body.take_chunked()
        else:
            body.take(declared)
        return body.kept()

    def _framing(self) -> tuple[bool, int]:
        """Whether the body comes chunked, and else the length it declares."""
        length = self.headers.get("content-length")
        encoding = self.headers.get("transfer-encoding", "").strip().lower()
        if encoding not in ("", "chunked"):
            raise _Refused(400, "invalid_request_error", "unsupported transfer-encoding")
        if encoding and length is not None:  # ambiguous framing: the classic smuggling vector
            raise _Refused(400, "invalid_request_error", "both content-length and chunked")
        if length is not None and not length.strip().isdigit():
            raise _Refused(400, "invalid_request_error", "bad content-length")
        return encoding == "chunked", int(length) if length is not None else 0

    def _forward(
        self, gateway: ModelGateway, body: bytes, headers: list[tuple[str, str]], route: Route
    ) -> None:
        answered = False
        url = gateway.upstream + route.upstream_path
        try:
            signed = gateway.authorize(url, headers, body)
            with gateway.client.stream("POST", url, content=body, headers=signed) as upstream:
                answered = True
                if upstream.status_code in (401, 403):
                    log.warning(
                        "gateway: %s refused the gateway's credential (%d)",
                        gateway.backend.name,
                        upstream.status_code,
                    )
                listening = True
                try:
                    self.send_response(upstream.status_code)
                    for key, value in upstream.headers.multi_items():
                        if key.lower() not in _RESPONSE_DROPPED:
                            self.send_header(key, value)
                    self.send_header("connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    listening = False  # the sandbox hung up; the answer is still counted
                meter = self._meter(gateway, upstream, route)
                self._relay(gateway, upstream.iter_bytes(), meter, listening)
        except httpx.HTTPError as exc:
            log.warning("gateway: upstream failed: %s", type(exc).__name__)
            if not answered:
                self._refuse(502, "api_error", "the model API could not be reached")
        except _CredentialFailed as exc:
            log.warning("gateway: %s", exc)
            self._refuse(502, "api_error", "the gateway could not obtain the model credential")

    def _meter(self, gateway: ModelGateway, upstream: httpx.Response, route: Route) -> _Meter:
        if not route.metered or upstream.status_code != 200:
            return None
        gateway._answered()
        tally = _MessageTally(gateway, route.model or "")
        kind = upstream.headers.get("content-type", "")
        if kind.startswith("text/event-stream"):
            return _SSEUsage(tally)
        if kind.startswith("application/vnd.amazon.eventstream"):
            return _EventStreamUsage(tally)
        if kind.startswith("application/json"):
            return _JSONUsage(tally)
        return None

    def _relay(
        self,
        gateway: ModelGateway,
        chunks: Iterable[bytes],
        meter: _Meter,
        listening: bool,
    ) -> None:
        """Pass each chunk on as it comes, counting its usage on the way (nothing is held back:
        the parser keeps only an unfinished line, and counts before the sandbox can act on it).

        If the sandbox hangs up mid-answer, the rest is still read (not sent) so that what the
        API charges is counted, unless the session is closed; then the answer is abandoned.
        """
        for chunk in chunks:
            if gateway.closed:
                break
            if meter is not None:
                meter.feed(chunk)
            elif not listening:
                break
            if listening:
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except OSError:
                    listening = False
                    self.close_connection = True
        if meter is not None:
            meter.close()


@dataclass(frozen=True)
class Allowance:
    """What one session may ask of the model API; by default, no limit but the body size.

    `budget_usd` and `max_tokens` (all tokens: input, output, cache writes and reads) end the
    session's model use once reached; `expires_at` is a `time.monotonic()` deadline after which
    every request is refused; `allowed_models` limits requests to those model families
    ("opus", "sonnet", "haiku"; a full model name counts as its family); `max_body_bytes` caps
    a request body.
    """

    budget_usd: float | None = None
    max_tokens: int | None = None
    expires_at: float | None = None
    allowed_models: Iterable[str] | None = None
    max_body_bytes: int = MAX_BODY_BYTES


UNLIMITED = Allowance()


class ModelGateway:
    """Serve the gateway for one session on `socket_path` until closed, within `allowance`.

    `usage` is the running total.
    """

    def __init__(
        self, socket_path: Path, backend: Backend, allowance: Allowance = UNLIMITED
    ) -> None:
        self.socket_path = socket_path
        self.backend = backend
        self.upstream = backend.upstream
        self.session_key = "ccgw-" + secrets.token_urlsafe(32)
        self.budget_usd = allowance.budget_usd
        self.max_tokens = allowance.max_tokens
        self.expires_at = allowance.expires_at
        self.allowed_models = (
            None
            if allowance.allowed_models is None
            else frozenset(pricing.family(m) for m in allowance.allowed_models)
        )
        self.max_body_bytes = allowance.max_body_bytes
        self._scrub = Redactor(*backend.secrets(), self.session_key)
        self._lock = threading.RLock()
        self._turn = threading.Condition(self._lock)  # a request in flight has finished
        self._in_flight = 0
        self._reserved_usd = 0.0  # the worst case of the requests in flight, not yet counted
        self._usage = Usage()
        self._closed = False
        self._connections: set[socket.socket] = set()
        self._server = _Server(str(socket_path), _Handler)
        self._server.gateway = self
        # Long read timeout: a streamed answer may pause while the model thinks.
        self.client = httpx.Client(
            timeout=httpx.Timeout(30, read=600, pool=600),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        # The sandbox user must be able to connect; the directory around it is per session.
        os.chmod(socket_path, 0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __repr__(self) -> str:
        return f"ModelGateway({str(self.socket_path)!r}, {self.upstream!r})"

    def __enter__(self) -> ModelGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        """The headers with the backend's credential added; a fresh credential (a refreshed
        token) is learnt by the redactor before it can show up anywhere."""
        try:
            signed = self.backend.authorize(url, headers, body)
        except Exception as exc:  # the backend's library failed (a token endpoint down)
            raise _CredentialFailed(
                self._scrub(f"{self.backend.name}: no credential ({type(exc).__name__}: {exc})")
            ) from None
        for secret in self.backend.secrets():
            self._scrub.add(secret)
        return signed

    # -- state ---------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        with self._lock:
            return self._usage

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and time.monotonic() >= self.expires_at

    def spent(self) -> str | None:
        """Why the budget allows no further request, or None while it does."""
        usage = self.usage
        if self.budget_usd is not None and usage.cost_usd >= self.budget_usd:
            return (
                f"the session's model budget is spent: {_usd(usage.cost_usd)} "
                f"of {_usd(self.budget_usd)} (estimated by the gateway)"
            )
        if self.max_tokens is not None and usage.tokens >= self.max_tokens:
            return (
                f"the session's token budget is spent: {usage.tokens} of {self.max_tokens} tokens"
            )
        return None

    def _enter(self, request: dict[str, Any], model: str | None, size: int) -> float:
        """Wait for the request's turn and admit it; what it may cost, held until `_leave`.

        The budget is checked again once the request's turn has come, with what the requests
        before it cost, and `max_tokens` is lowered to what the budget left can pay; beside
        requests still in flight, a request is admitted only if the budget left can pay for it
        on top of their worst case. Else `_Refused`: 402, or 429 after a long wait.
        """
        deadline = time.monotonic() + _ADMISSION_WAIT
        with self._turn:
            while True:
                if self._closed:
                    raise _Refused(401, "authentication_error", "session closed")
                if spent := self.spent():
                    raise _Refused(402, "billing_error", spent)
                if self._in_flight < MAX_IN_FLIGHT:
                    reserved = self._reserve(request, model, size)
                    if reserved is not None:
                        self._in_flight += 1
                        self._reserved_usd += reserved
                        return reserved
                if (left := deadline - time.monotonic()) <= 0:
                    raise _Refused(
                        429,
                        "rate_limit_error",
                        f"over {MAX_IN_FLIGHT} requests of this session in flight",
                    )
                self._turn.wait(left)

    def _reserve(self, request: dict[str, Any], model: str | None, size: int) -> float | None:
        """Lower the request's max_tokens to what the budget left pays; None: wait for others.

        `model`: the model the request is for, None for one that costs nothing (counting)."""
        if model is None or (self.budget_usd is None and self.max_tokens is None):
            return 0.0
        rates = pricing.price(model)
        # Dearest case: every prompt token a 1-hour cache write past the long-prompt price.
        per_output = rates.output * rates.long_output_factor / pricing.MTOK
        per_byte = rates.input * rates.long_input_factor * pricing.CACHE_WRITE_1H / pricing.MTOK
        prompt = size / 4 * per_byte  # the stand-in's and a rough real ratio of bytes to tokens
        affordable = request["max_tokens"]
        if self.budget_usd is not None:
            left = self.budget_usd - self._usage.cost_usd - self._reserved_usd
            if self._in_flight:
                left -= prompt
            affordable = min(affordable, max(0, int(left / per_output)))
        if self.max_tokens is not None:
            affordable = min(affordable, max(0, self.max_tokens - self._usage.tokens))
        if self._in_flight:
            if affordable < min(request["max_tokens"], _PARALLEL_MIN_OUTPUT):
                return None
        elif affordable < MIN_OUTPUT_TOKENS:
            raise _Refused(
                402,
                "billing_error",
                f"the session's budget left cannot pay for an answer of "
                f"{MIN_OUTPUT_TOKENS} tokens from {model[:100]!r}",
            )
        if affordable < request["max_tokens"]:
            request["max_tokens"] = affordable
            thinking = request.get("thinking")
            if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
                if affordable <= 1024:  # the API's least thinking budget: answer without
                    del request["thinking"]
                else:
                    thinking["budget_tokens"] = min(thinking["budget_tokens"], affordable - 1)
        return affordable * per_output + prompt

    def _leave(self, reserved: float) -> None:
        with self._turn:
            self._in_flight -= 1
            self._reserved_usd = max(0.0, self._reserved_usd - reserved)
            self._turn.notify_all()

    def _answered(self) -> None:
        with self._lock:
            self._usage = replace(self._usage, requests=self._usage.requests + 1)

    def _refused(self, kind: str) -> None:
        with self._lock:
            refused = dict(self._usage.refused)
            refused[kind] = refused.get(kind, 0) + 1
            self._usage = replace(self._usage, refused=refused)

    def _add(self, model: str, tokens: dict[str, int], cost: float) -> None:
        with self._lock:
            before = self._usage
            by_model = dict(before.by_model)
            by_model[model] = by_model.get(model, Usage()).plus(tokens, cost)
            self._usage = replace(before.plus(tokens, cost), by_model=by_model)
        if (
            self.budget_usd is not None
            and before.cost_usd < self.budget_usd <= self._usage.cost_usd
        ):
            log.warning("gateway: session budget of %s spent", _usd(self.budget_usd))

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)
            closed = self._closed
        if add and closed:
            _cut(connection)

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """Make the session key worthless now: no new connection, no further request."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._turn.notify_all()  # requests waiting for their turn: refused
            connections = list(self._connections)
        self.socket_path.unlink(missing_ok=True)
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        for connection in connections:
            _cut(connection)
        self.client.close()


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
