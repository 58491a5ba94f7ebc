"""A real HTTP stand-in for the Anthropic Messages API, scripted turn by turn.

``AnthropicStandIn`` is a threaded HTTP/1.1 server on 127.0.0.1 that speaks enough of
the Messages API for the real ``claude`` CLI (2.1.332, ``-p`` headless mode) to follow a
script of model turns: it answers ``POST /v1/messages`` (``?beta=true`` or not) with SSE
streams (``stream: true``) or JSON, ``POST /v1/messages/count_tokens`` with a token
estimate, and anything else with 404 and an Anthropic-shaped error.

Scripting::

    with AnthropicStandIn() as api:
        api.script([
            ToolUse("Write", {"file_path": "/workspace/X.md", "content": "hi"}),
            [Text("Two edits:"), ToolUse("Edit", {...}), ToolUse("Edit", {...})],
            Text("Added the file"),
        ])
        ... run claude with ANTHROPIC_BASE_URL=api.url ...
        assert api.main_requests()[0].user_text() == "..."

A turn is a ``ToolUse`` (stop_reason ``tool_use``), a ``Text`` (stop_reason
``end_turn`` unless given), a ``Structured`` (the final answer of a ``--json-schema`` run,
see below), a list/tuple of ``Text``/``ToolUse``/``Structured`` blocks (one assistant
message; ``tool_use`` if it holds any tool use), or a ``Fail``.  A ``Fail`` stays at the
head of its queue, so CLI retries fail too, unless ``times`` limits how many requests of
that queue it fails.  While a ``Fail`` heads the main script, *every* messages request
(main, subagent, side) gets that error; one in the subagent queue fails only subagent
requests.  When a script is exhausted its requests get ``Text("done")``.

Request classification (``classify_messages_request``): a ``POST /v1/messages`` is

* ``"subagent"`` if it has an ``x-claude-code-agent-id`` header -> answered from the
  separate ``script_subagents()`` queue (``Text("done")`` when empty);
* ``"main"`` if otherwise it has a non-empty ``tools`` list and ``max_tokens`` > 1 ->
  consumes ``script()`` turns;
* ``"side"`` otherwise (no tools, or a ``max_tokens: 1`` probe) -> ``Text(side_text)``
  (default "OK"), never consuming the script.

Evidence (claude 2.1.332 as root with ``IS_SANDBOX=1``, ``-p ... --output-format
stream-json --verbose --dangerously-skip-permissions --max-turns N``,
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1``):
every request was ``POST /v1/messages?beta=true`` with ``stream: true``, ``max_tokens:
128000``, the session model (``claude-opus-5-5``) and 12 tools (Agent, Bash, Edit,
ListAgents, Read, ReportFindings, ScheduleWakeup, Skill, ToolSearch, Workflow,
DeferredToolPlaceholder, Write; the rest are deferred behind ToolSearch) — for Write,
Bash, Read, Edit, multi-tool turns, git repos, ``--max-turns`` exhaustion, 401/5xx
failures.  No title/summary/topic/quota side request and no ``count_tokens`` call was
ever seen, so in this configuration every request without the agent-id header is
main-loop; the "side" branch is a guard for other versions/configurations.  A subagent
(``Agent`` tool, runs asynchronously, concurrently with the main loop) sends requests
with ``x-claude-code-agent-id: <id>``, 8 tools and its own system prompt; without a
separate queue it raced the main loop for scripted turns.  Without
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` the CLI additionally sends ``HEAD
/api/hello`` (answered 404 here; harmless).  A gateway in front of the stand-in must pass
``x-claude-code-agent-id`` through for subagent classification to work.

Retries (observed): with default settings the CLI retried both a 401
``authentication_error`` and a 529 ``overloaded_error`` 10 times (``system/api_retry``
events, backoff 0.55, 1.1, 2, 4.3, 8.4, 18, then ~34-40 s; a ``retry-after: 0`` header did
not shorten it), ending after ~190 s (401) / ~175 s (529).  ``CLAUDE_CODE_MAX_RETRIES``
sets the count: with ``0`` a 401, 500 or 529 run ends after one request in ~1 s; with
``2``, three requests in ~4 s.  Each retry is a new request, which a ``Fail`` also fails.

Structured output (``claude -p --json-schema '<schema>'``, observed with 2.1.332): the CLI
adds one tool to every main-loop request, ``{"name": "StructuredOutput", "description": "Use
this tool to return your final response in the requested structured format. You MUST call
this tool exactly once at the end of your response ...", "input_schema": <the schema,
verbatim>}``; no ``tool_choice``, no system-prompt text.  The model answers by calling that
tool with the object as its input -- ``Structured(obj)`` is exactly that ``tool_use``.  The
CLI validates it against the schema: if it fits, the tool result is "Structured output
provided successfully", the run ends at once (no further request) and the ``result`` event
carries ``structured_output: <obj>`` (and ``result``: the object as a JSON string).  If not,
the tool result is ``is_error`` "Output does not match required schema: /summary: must be
string" (ajv messages) and the model may try again; after 5 invalid calls the run ends with
``subtype: error_max_structured_output_retries``, ``is_error: true``, ``terminal_reason:
structured_output_retry_exhausted``, exit 1.  A text-only answer gets one synthetic user
message "[structured-output-enforce] You MUST call the StructuredOutput tool to complete
this request. Call this tool now."; a second text-only answer ends the run as ``success``
with NO ``structured_output`` key.  ``RecordedRequest.structured_output_schema`` is the
schema the CLI offered (None without ``--json-schema``).

Secrets: request headers are recorded verbatim (tests compare API keys), but nothing is
logged, and ``RecordedRequest.__repr__`` redacts credential headers.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "AnthropicStandIn",
    "Fail",
    "Recalls",
    "RecordedRequest",
    "STRUCTURED_OUTPUT_TOOL",
    "Structured",
    "Text",
    "ToolUse",
    "classify_messages_request",
    "is_main_loop_request",
]

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})
STRUCTURED_OUTPUT_TOOL = "StructuredOutput"  # the tool ``--json-schema`` adds (CLI 2.1.332)
HOLD_LIMIT = 600.0  # seconds a held answer waits at most, so a failing test still ends


# --------------------------------------------------------------------------- turn types


@dataclass(frozen=True)
class Text:
    """A text block; as a turn of its own: the final answer (stop_reason ``end_turn``)."""

    text: str
    stop_reason: str = "end_turn"
    delay: float = 0.0  # seconds to wait before answering (as a turn of its own)


@dataclass(frozen=True)
class ToolUse:
    """A ``tool_use`` block; as a turn of its own, stop_reason is ``tool_use``."""

    name: str
    input: dict[str, Any]
    id: str | None = None  # generated (``toolu_…``) when None
    delay: float = 0.0
    # Answer only once the test sets it (bounded by HOLD_LIMIT): a wait on a condition, not a
    # time, so a test can keep sandboxes alive together however slowly a loaded machine starts them.
    hold: threading.Event | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fail:
    """Answer with an HTTP error and Anthropic's error JSON.

    Stays at the head of the script: every further messages request (main loop or side)
    fails the same way.  With ``times`` set, it is dropped after failing that many
    main-loop requests.
    """

    status: int
    error_type: str
    message: str
    times: int | None = None


@dataclass(frozen=True)
class Structured:
    """The structured answer of a ``--json-schema`` run: a ``StructuredOutput`` tool use.

    ``output`` is what the CLI validates against the schema and reports as the ``result``
    event's ``structured_output``; it need not be valid (to exercise the CLI's retries).
    """

    output: Any
    id: str | None = None  # generated (``toolu_…``) when None
    delay: float = 0.0

    def as_tool_use(self) -> ToolUse:
        return ToolUse(STRUCTURED_OUTPUT_TOOL, self.output, id=self.id, delay=self.delay)


Block = Text | ToolUse | Structured
Turn = Text | ToolUse | Structured | Fail | Sequence[Block]


@dataclass(frozen=True)
class Recalls:
    """A turn that needs the conversation so far: answered with ``then`` only if the request's
    messages hold ``needle`` (what an earlier turn said), else with ``otherwise``.  A model
    that was not given the earlier conversation cannot know what it said."""

    needle: str
    then: Turn
    otherwise: Turn = Text("I have no earlier conversation to go on: which file do you mean?")

    def answer(self, body: dict[str, Any]) -> Turn:
        seen = json.dumps(body.get("messages") or [], ensure_ascii=False)
        return self.then if self.needle in seen else self.otherwise


# --------------------------------------------------------------------------- recording


@dataclass
class RecordedRequest:
    method: str
    path: str  # path without the query string, e.g. "/v1/messages"
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    kind: str  # "main", "subagent", "side", "count_tokens", "other" (404), "rejected"
    status: int = 0  # HTTP status answered
    usage: dict[str, int] | None = None  # the usage a message answer reported
    client: tuple[str, int] = ("", 0)  # peer address: same value = same (kept-alive) connection
    received_at: float = field(default_factory=time.time)
    answered_at: float = 0.0  # when the whole answer was sent (bench/session.py's timings)

    def __repr__(self) -> str:
        hdrs = {k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in self.headers.items()}
        summary = None
        if isinstance(self.body, dict):
            summary = {
                "model": self.body.get("model"),
                "stream": self.body.get("stream"),
                "max_tokens": self.body.get("max_tokens"),
                "n_messages": len(self.body.get("messages") or []),
                "n_tools": len(self.body.get("tools") or []),
            }
        return (
            f"RecordedRequest({self.method} {self.path} kind={self.kind} status={self.status} "
            f"headers={hdrs} body~{summary})"
        )

    # convenience accessors -------------------------------------------------------

    @property
    def api_key(self) -> str | None:
        """The credential presented (``x-api-key`` or ``Authorization: Bearer``)."""
        return _presented_key(self.headers)

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("tools") or []) if isinstance(self.body, dict) else []

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.tools]

    @property
    def messages(self) -> list[dict[str, Any]]:
        if not isinstance(self.body, dict):
            return []
        return list(self.body.get("messages") or [])

    @property
    def stream(self) -> bool:
        return bool(isinstance(self.body, dict) and self.body.get("stream"))

    def user_text(self) -> str:
        """All text of all user messages (string content and ``text`` blocks), joined."""
        return "\n".join(_texts(m.get("content")) for m in self.messages if m.get("role") == "user")

    @property
    def structured_output_schema(self) -> dict[str, Any] | None:
        """The JSON schema of the ``StructuredOutput`` tool offered (``--json-schema`` runs)."""
        for tool in self.tools:
            if tool.get("name") == STRUCTURED_OUTPUT_TOOL:
                return tool.get("input_schema")
        return None

    def system_text(self) -> str:
        return _texts((self.body or {}).get("system")) if isinstance(self.body, dict) else ""

    def tool_results(self) -> list[dict[str, Any]]:
        """All ``tool_result`` blocks sent back by the client, in order."""
        out = []
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, list):
                out.extend(
                    b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
                )
        return out


def _texts(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts)


def _presented_key(headers: dict[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def classify_messages_request(headers: dict[str, str], body: Any) -> str:
    """``"main"``, ``"subagent"`` or ``"side"`` for a ``POST /v1/messages`` request.

    * ``"subagent"``: the request carries an ``x-claude-code-agent-id`` header (sent by the
      CLI for every request of an ``Agent``/Task subagent; the main loop never sends it).
    * ``"main"``: otherwise, if it offers tools (non-empty ``tools``) and is not a
      ``max_tokens <= 1`` probe.
    * ``"side"``: everything else (no tools: title/topic/summary calls on the small model,
      quota probes).  Answered with a short text, never consuming the script.

    ``headers`` must have lower-cased names.  The module docstring has the evidence.
    """
    if not isinstance(body, dict):
        return "side"
    if headers.get("x-claude-code-agent-id"):
        return "subagent"
    if not body.get("tools"):
        return "side"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens <= 1:
        return "side"
    return "main"


def is_main_loop_request(headers: dict[str, str], body: Any) -> bool:
    return classify_messages_request(headers, body) == "main"


# --------------------------------------------------------------------------- usage


def _estimate_tokens(obj: Any) -> int:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return max(1, len(text) // 4)


def _usage_for(body: Any, output_blocks: list[dict[str, Any]]) -> dict[str, int]:
    """Plausible usage: ~4 chars/token of the request, plus a cache split if cache_control used."""
    prompt = {}
    if isinstance(body, dict):
        prompt = {k: body.get(k) for k in ("system", "messages", "tools")}
    total_in = _estimate_tokens(prompt)
    out = sum(_estimate_tokens(b.get("text") or b.get("input") or "") for b in output_blocks)
    out = max(out + 5, 10)
    return {
        "input_tokens": total_in,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": out,
    }


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: AnthropicStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AnthropicStandIn/1.0"
    sys_version = ""
    server: _Server

    # no stderr logging (paths only, but keep test output clean and secret-free)
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    def do_PUT(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    def do_PATCH(self) -> None:  # noqa: N802
        self.server.standin._handle(self)

    # -- body / response helpers -------------------------------------------------

    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            data = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
        enc = (self.headers.get("Content-Encoding") or "").lower()
        if enc == "gzip":
            data = gzip.decompress(data)
        elif enc == "deflate":
            data = zlib.decompress(data)
        return data

    def send_json(self, status: int, obj: Any, extra_headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        self._chunked = self.request_version == "HTTP/1.1"
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        if self._chunked:
            frame = f"{len(frame):x}\r\n".encode() + frame + b"\r\n"
        self.wfile.write(frame)
        self.wfile.flush()

    def end_sse(self) -> None:
        if self._chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class AnthropicStandIn:
    """Scripted Anthropic Messages API on ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        expected_api_key: str | None = None,
        side_text: str = "OK",
        model: str | None = None,
        bearer: bool = False,
        required_beta: str | None = None,
    ) -> None:
        """`bearer`: the key must come as `Authorization: Bearer` (a subscription token, an
        LLM gateway's), and a request that also carries an x-api-key is refused, as the API
        refuses two credentials; `required_beta`: a beta every request must ask for (the
        `oauth-2025-04-20` a subscription token needs)."""
        self.host = host
        self._port = port
        self.expected_api_key = expected_api_key
        self.bearer = bearer
        self.required_beta = required_beta
        self.side_text = side_text
        self.model = model  # overrides the model echoed back (default: the request's)
        self._lock = threading.Lock()
        self._queues: dict[str, list[Turn]] = {"main": [], "subagent": []}
        self._fail_hits: dict[str, int] = {"main": 0, "subagent": 0}
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> AnthropicStandIn:
        if self._server is not None:
            return self
        server = _Server((self.host, self._port), _Handler)
        server.standin = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"anthropic-standin:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> AnthropicStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # -- scripting -----------------------------------------------------------------

    def script(self, turns: Sequence[Turn]) -> None:
        """Replace the queue of main-loop turns."""
        self._set_queue("main", turns)

    def script_subagents(self, turns: Sequence[Turn]) -> None:
        """Replace the queue of turns answered to subagent requests (all subagents share it)."""
        self._set_queue("subagent", turns)

    def add_turns(self, *turns: Turn) -> None:
        """Append turns to the main-loop queue."""
        for t in turns:
            _validate_turn(t)
        with self._lock:
            self._queues["main"].extend(turns)

    @property
    def remaining_turns(self) -> list[Turn]:
        with self._lock:
            return list(self._queues["main"])

    def _set_queue(self, name: str, turns: Sequence[Turn]) -> None:
        turns = list(turns)
        for t in turns:
            _validate_turn(t)
        with self._lock:
            self._queues[name] = turns
            self._fail_hits[name] = 0

    # -- recorded requests -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (including 404s and rejected ones)."""
        with self._lock:
            return list(self._requests)

    def main_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "main"]

    def subagent_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "subagent"]

    def side_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "side"]

    def message_requests(self) -> list[RecordedRequest]:
        """All ``POST /v1/messages`` requests that passed the key check."""
        return [r for r in self.requests if r.kind in ("main", "subagent", "side")]

    def reset(self) -> None:
        """Forget recorded requests and empty both scripts."""
        with self._lock:
            self._requests.clear()
            self._queues = {"main": [], "subagent": []}
            self._fail_hits = {"main": 0, "subagent": 0}
            self._per_conversation = []

    # -- request handling -------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path = split.path.rstrip("/") or "/"
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            raw = h.read_body()
        except Exception:  # malformed framing: answer and drop the connection
            h.close_connection = True
            h.send_json(400, _error_body("invalid_request_error", "unreadable request body"))
            return
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        rec = RecordedRequest(
            method=h.command,
            path=path,
            query=parse_qs(split.query),
            headers=headers,
            body=body,
            kind="other",
            client=tuple(h.client_address[:2]),
        )
        with self._lock:
            self._requests.append(rec)

        is_messages = h.command == "POST" and path == "/v1/messages"
        is_count = h.command == "POST" and path == "/v1/messages/count_tokens"
        if not (is_messages or is_count):
            rec.status = 404
            h.send_json(404, _error_body("not_found_error", f"Not found: {h.command} {path}"))
            return

        if refusal := self._credential_refusal(headers):
            rec.kind, rec.status = "rejected", 401
            h.send_json(401, _error_body("authentication_error", refusal))
            return

        if not isinstance(body, dict):
            rec.kind, rec.status = "rejected", 400
            h.send_json(400, _error_body("invalid_request_error", "request body is not JSON"))
            return

        if is_count:
            rec.kind, rec.status = "count_tokens", 200
            h.send_json(200, {"input_tokens": _usage_for(body, [])["input_tokens"]})
            return

        rec.kind = classify_messages_request(headers, body)
        turn = self._turn_for(rec, body)

        if isinstance(turn, Fail):
            rec.status = turn.status
            h.send_json(turn.status, _error_body(turn.error_type, turn.message))
            return

        blocks: list[Block] = list(turn) if isinstance(turn, list | tuple) else [turn]
        blocks = [b.as_tool_use() if isinstance(b, Structured) else b for b in blocks]
        delay = max((b.delay for b in blocks), default=0.0)
        if delay:
            time.sleep(delay)
        for block in blocks:
            if isinstance(block, ToolUse) and block.hold is not None:
                block.hold.wait(HOLD_LIMIT)
        if len(blocks) == 1 and isinstance(blocks[0], Text):
            stop_reason = blocks[0].stop_reason
        else:
            stop_reason = "tool_use" if any(isinstance(b, ToolUse) for b in blocks) else "end_turn"
        content = [_block_json(b) for b in blocks]
        model = self.model or body.get("model") or "claude-sonnet-4-5"
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": _usage_for(body, content),
        }
        rec.status, rec.usage = 200, message["usage"]
        try:
            if body.get("stream"):
                _stream_message(h, message)
            else:
                h.send_json(200, message)
            rec.answered_at = time.time()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _turn_for(self, rec: RecordedRequest, body: dict[str, Any]) -> Turn:
        turn = self._next_turn(rec.kind, rec.headers)
        return turn.answer(body) if isinstance(turn, Recalls) else turn

    def _credential_refusal(self, headers: dict[str, str]) -> str:
        """Why the credential presented is refused, or "" if it is the expected one."""
        if self.expected_api_key is None:
            return ""
        if not self.bearer:
            ok = _presented_key(headers) == self.expected_api_key
            return "" if ok else "invalid x-api-key"
        if "x-api-key" in headers:
            return "an x-api-key where a bearer token was expected"
        if headers.get("authorization", "") != f"Bearer {self.expected_api_key}":
            return "invalid bearer token"
        betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",")]
        if self.required_beta and self.required_beta not in betas:
            return f"OAuth authentication requires the {self.required_beta} beta"
        return ""

    def script_each_conversation(self, turns: Sequence[Turn]) -> None:
        """Give every CLI conversation its own copy of ``turns`` (for concurrent sessions).

        Conversations are told apart by the ``x-claude-code-session-id`` header the CLI sends;
        main-loop requests of each take turns from that conversation's copy only.
        """
        turns = list(turns)
        for t in turns:
            _validate_turn(t)
        with self._lock:
            self._per_conversation = turns
            self._conversations: dict[str, list[Turn]] = {}

    def _next_turn(self, kind: str, headers: dict[str, str] | None = None) -> Turn:
        """The turn answering a request of ``kind`` ("main", "subagent" or "side")."""
        conversation = (headers or {}).get("x-claude-code-session-id")
        if kind == "main" and conversation and getattr(self, "_per_conversation", None):
            with self._lock:
                own = self._conversations.setdefault(conversation, list(self._per_conversation))
                return own.pop(0) if own else Text("done")
        with self._lock:
            main_head = self._queues["main"][0] if self._queues["main"] else None
            # A Fail heading the main script fails every messages request.
            if isinstance(main_head, Fail) and kind != "main":
                return main_head
            if kind == "side":
                return Text(self.side_text)
            queue = self._queues[kind]
            if not queue:
                return Text("done")
            head = queue[0]
            if isinstance(head, Fail):
                self._fail_hits[kind] += 1
                if head.times is not None and self._fail_hits[kind] >= head.times:
                    queue.pop(0)
                    self._fail_hits[kind] = 0
                return head
            return queue.pop(0)


def _validate_turn(t: Any) -> None:
    if isinstance(t, Recalls):
        _validate_turn(t.then)
        _validate_turn(t.otherwise)
        return
    if isinstance(t, Text | ToolUse | Structured | Fail):
        return
    if (
        isinstance(t, list | tuple)
        and t
        and all(isinstance(b, Text | ToolUse | Structured) for b in t)
    ):
        return
    raise TypeError(
        f"not a turn: {t!r} (Text, ToolUse, Structured, Fail, or a non-empty list of blocks)"
    )


def _block_json(b: Block) -> dict[str, Any]:
    if isinstance(b, Text):
        return {"type": "text", "text": b.text}
    return {
        "type": "tool_use",
        "id": b.id or "toolu_" + uuid.uuid4().hex[:24],
        "name": b.name,
        "input": b.input,
    }


def _pieces(s: str, n: int = 3) -> Iterator[str]:
    """Split into up to n non-empty pieces (to exercise delta accumulation)."""
    if len(s) <= n:
        yield from (c for c in s)
        return
    step = -(-len(s) // n)
    for i in range(0, len(s), step):
        yield s[i : i + step]


def _stream_message(h: _Handler, message: dict[str, Any]) -> None:
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = dict(usage, output_tokens=1)
    h.start_sse()
    h.send_event("message_start", {"type": "message_start", "message": start})
    h.send_event("ping", {"type": "ping"})
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            h.send_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _pieces(block["text"]):
                h.send_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            h.send_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            h.send_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": ""},
                },
            )
            for piece in _pieces(json.dumps(block["input"])):
                h.send_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        h.send_event("content_block_stop", {"type": "content_block_stop", "index": i})
    h.send_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    h.send_event("message_stop", {"type": "message_stop"})
    h.end_sse()
