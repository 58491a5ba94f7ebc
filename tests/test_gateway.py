"""The model gateway on its Unix socket, in front of the (stand-in) Messages API.

The CLI tests run the REAL `claude` CLI (2.1.332) on the host, through a TCP -> Unix-socket relay
like the one in the sandbox image, with CLAUDE_CODE_MAX_RETRIES=4 (production's default): a
refusal the CLI retried would show up as more than one refusal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import jobs.gateway.proxy
from jobs.gateway import pricing
from jobs.gateway.backends import AnthropicApiKey
from jobs.gateway.proxy import Allowance, ModelGateway, _MessageTally, _SSEUsage
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.support import NPM, free_port, reported_usage, wait_for

REAL_KEY = "sk-ant-api03-test-key-held-only-by-the-gateway"


@pytest.fixture
def api():
    with AnthropicStandIn(expected_api_key=REAL_KEY) as api:
        yield api


@pytest.fixture
def gateway(tmp_path, api):
    with ModelGateway(tmp_path / "gw.sock", AnthropicApiKey(api.url, REAL_KEY)) as gw:
        yield gw


@pytest.fixture
def make_gateway(tmp_path, api):
    """A gateway with options, in front of the stand-in (or `upstream`); closed after the test."""
    made = []

    def make(upstream: str | None = None, **options) -> ModelGateway:
        path = tmp_path / f"gw{len(made)}.sock"
        backend = AnthropicApiKey(upstream or api.url, REAL_KEY)
        gw = ModelGateway(path, backend, Allowance(**options)).__enter__()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


@pytest.fixture
def gateway_log(caplog):
    caplog.set_level(logging.DEBUG, logger="jobs.gateway.proxy")
    return caplog


def client(gw: ModelGateway) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(gw.socket_path)), base_url="http://sandbox"
    )


def key(gw: ModelGateway) -> dict[str, str]:
    return {"x-api-key": gw.session_key}


MESSAGE = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
}


def stream(gw: ModelGateway, body: dict = MESSAGE) -> tuple[httpx.Response, list[dict]]:
    """POST a message through the gateway; the answer and its SSE events' data, in order."""
    with (
        client(gw) as c,
        c.stream("POST", "/v1/messages?beta=true", json=body, headers=key(gw)) as resp,
    ):
        lines = list(resp.iter_lines())
    return resp, [json.loads(line[5:]) for line in lines if line.startswith("data:")]


# --------------------------------------------------------------------------- the basics


def test_streams_messages_with_the_real_key_swapped_in(api, gateway):
    api.script([Text("hello from the model")])
    with (
        client(gateway) as c,
        c.stream(
            "POST",
            "/v1/messages?beta=true",
            json=MESSAGE,
            headers={"x-api-key": gateway.session_key},
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("event:")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
    (request,) = api.requests
    assert request.headers["x-api-key"] == REAL_KEY
    assert (request.path, request.query) == ("/v1/messages", {"beta": ["true"]})
    assert gateway.session_key not in str(request.headers)


@pytest.mark.parametrize("key", ["", "ccgw-guess", REAL_KEY])
def test_refuses_anything_but_the_session_key(api, gateway, key):
    with client(gateway) as c:
        resp = c.post("/v1/messages", json=MESSAGE, headers={"x-api-key": key})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert resp.headers["x-should-retry"] == "false"
    assert api.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/files"),
        ("POST", "/v1/complete"),
        ("GET", "/"),
        ("POST", "/v1/messages/batches"),
        ("POST", "/v1/messages/../files"),
        ("DELETE", "/v1/messages"),
    ],
)
def test_refuses_everything_but_the_messages_api(api, gateway, method, path):
    with client(gateway) as c:
        resp = c.request(method, path, headers={"x-api-key": gateway.session_key})
    assert resp.status_code == 403
    assert api.requests == []


def test_unreachable_upstream_is_a_502_not_a_hang(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with ModelGateway(tmp_path / "gw.sock", AnthropicApiKey(dead, REAL_KEY)) as gw, client(gw) as c:
        resp = c.post("/v1/messages", json=MESSAGE, headers={"x-api-key": gw.session_key})
    assert resp.status_code == 502
    assert REAL_KEY not in resp.text


def test_socket_is_gone_after_close(tmp_path, api):
    gw = ModelGateway(tmp_path / "gw.sock", AnthropicApiKey(api.url, REAL_KEY))
    with gw:
        assert gw.socket_path.exists()
    assert not gw.socket_path.exists()


def test_count_tokens_passes(api, gateway):
    with client(gateway) as c:
        resp = c.post("/v1/messages/count_tokens", json=MESSAGE, headers=key(gateway))
    assert resp.status_code == 200 and resp.json()["input_tokens"] > 0
    assert gateway.usage.tokens == 0  # counting tokens costs nothing


# --------------------------------------------------------------------------- usage and budget


def test_usage_is_read_from_the_stream_as_it_passes(api, make_gateway):
    gw = make_gateway()
    api.script([Text("first answer"), Text("a second, longer answer than the first")])
    _, first = stream(gw)
    _, second = stream(gw)
    one, two = reported_usage(first), reported_usage(second)
    assert one["output_tokens"] > 1  # message_delta's count replaced message_start's
    usage = gw.usage
    for field in pricing.TOKEN_FIELDS:
        assert getattr(usage, field) == one[field] + two[field]
    expected = pricing.cost_usd("claude-sonnet-5-5", one) + pricing.cost_usd(
        "claude-sonnet-5-5", two
    )
    assert usage.cost_usd == pytest.approx(expected)
    assert list(usage.by_model) == ["claude-sonnet-5-5"]
    assert usage.by_model["claude-sonnet-5-5"].tokens == usage.tokens
    assert usage.as_dict()["tokens"] == usage.tokens


def test_usage_of_a_json_answer(api, make_gateway):
    gw = make_gateway()
    with client(gw) as c:
        resp = c.post(
            "/v1/messages",
            json=dict(MESSAGE, stream=False, model="claude-haiku-4-5"),
            headers=key(gw),
        )
    assert resp.status_code == 200
    reported = resp.json()["usage"]
    assert gw.usage.input_tokens == reported["input_tokens"] > 0
    assert gw.usage.output_tokens == reported["output_tokens"] > 0
    assert gw.usage.cost_usd == pytest.approx(pricing.cost_usd("claude-haiku-4-5", reported))


def test_sse_usage_parser_takes_any_split_and_crlf(tmp_path, api):
    gw = ModelGateway(tmp_path / "gw.sock", AnthropicApiKey(api.url, REAL_KEY))
    try:
        start = {
            "type": "message_start",
            "message": {
                "model": "claude-opus-5-5",
                "usage": {
                    "input_tokens": 1000,
                    "cache_read_input_tokens": 50_000,
                    "cache_creation_input_tokens": 2000,
                    "output_tokens": 1,
                },
            },
        }
        body = (
            f"event: message_start\r\ndata: {json.dumps(start)}\r\n\r\n"
            'event: content_block_delta\r\ndata: {"type": "content_block_delta", "usage": '
            '{"output_tokens": 99999}}\r\n\r\n'  # not a usage event: ignored
            ": a comment\r\n"
            'event: message_delta\r\ndata: {"type": "message_delta", "usage": '
            '{"output_tokens": 700}}\r\n\r\n'
        ).encode()
        parser = _SSEUsage(_MessageTally(gw, ""))
        for i in range(len(body)):
            parser.feed(body[i : i + 1])
        parser.close()
        usage = gw.usage
        assert (usage.input_tokens, usage.output_tokens) == (1000, 700)
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (50_000, 2000)
        # Opus 5.5: $4 in, $20 out, $0.20 cache reads, 5-minute cache writes 1.25x
        expected = (1000 * 4 + 50_000 * 0.2 + 2000 * 5 + 700 * 20) / 1e6
        assert usage.cost_usd == pytest.approx(expected)
    finally:
        gw.close()


def test_the_request_after_the_budget_is_spent_is_refused(api, make_gateway, gateway_log):
    gw = make_gateway(budget_usd=0.0002)  # 20 output tokens of Sonnet 5.5
    api.script([Text("this answer spends the budget, " * 4), Text("never sent")])
    resp, _ = stream(gw)
    assert resp.status_code == 200  # the request that spends it finishes
    assert gw.usage.cost_usd >= 0.0002 and gw.spent()
    with client(gw) as c:
        refused = c.post("/v1/messages", json=MESSAGE, headers=key(gw))
    assert refused.status_code == 402
    assert refused.headers["x-should-retry"] == "false"
    error = refused.json()
    assert error["type"] == "error" and error["error"]["type"] == "billing_error"
    assert "budget is spent" in error["error"]["message"]
    assert len(api.message_requests()) == 1
    assert "budget of $0.0002 spent" in gateway_log.text


def test_token_budget(api, make_gateway):
    gw = make_gateway(max_tokens=20)
    resp, _ = stream(gw)
    assert resp.status_code == 200
    with client(gw) as c:
        refused = c.post("/v1/messages/count_tokens", json=MESSAGE, headers=key(gw))
    assert refused.status_code == 402
    assert "token budget is spent" in refused.json()["error"]["message"]


# --------------------------------------------------------------------------- expiry and close


def test_refuses_everything_once_expired(api, make_gateway):
    gw = make_gateway(expires_at=time.monotonic() + 1.0)
    with client(gw) as c:
        assert c.post("/v1/messages", json=MESSAGE, headers=key(gw)).status_code == 200
        wait_for(lambda: gw.expired, 5, what="expiry")
        resp = c.post("/v1/messages", json=MESSAGE, headers=key(gw))
    assert resp.status_code == 401
    assert resp.json()["error"] == {"type": "authentication_error", "message": "session expired"}
    assert resp.headers["x-should-retry"] == "false"
    assert len(api.requests) == 1


def _raw_request(gw: ModelGateway, target: str = "/v1/messages") -> bytes:
    body = json.dumps(MESSAGE).encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: sandbox\r\ncontent-type: application/json\r\n".encode()
        + f"x-api-key: {gw.session_key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _answer(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def _connected(gw: ModelGateway) -> socket.socket:
    """A connection the gateway has accepted (and waits on for a request)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(gw.socket_path))
    wait_for(lambda: gw._connections, 5, what="the gateway to accept")
    return sock


def test_close_cuts_a_connection_opened_before_it(api, make_gateway):
    gw = make_gateway()
    sock = _connected(gw)
    gw.close()
    assert not gw.socket_path.exists()
    with contextlib.suppress(OSError):
        sock.sendall(_raw_request(gw))
    assert _answer(sock) == b""
    assert api.requests == []


def test_a_request_after_close_on_an_open_connection_is_refused(api, make_gateway, monkeypatch):
    # Even were the connection not cut (a race with close), the request itself is refused.
    monkeypatch.setattr(jobs.gateway.proxy, "_cut", lambda connection: None)
    gw = make_gateway()
    sock = _connected(gw)
    gw.close()
    sock.sendall(_raw_request(gw))
    answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.0 401 ")
    assert b'"session closed"' in answer
    assert api.requests == []


# --------------------------------------------------------------------------- what passes


def test_size_cap(api, make_gateway):
    gw = make_gateway()
    big = dict(MESSAGE, messages=[{"role": "user", "content": "x" * (21 * 1024 * 1024)}])
    with client(gw) as c:
        resp = c.post("/v1/messages", json=big, headers=key(gw))
        assert resp.status_code == 413
        assert resp.json()["error"]["type"] == "request_too_large"
    small = make_gateway(max_body_bytes=1000)
    with client(small) as c:
        chunks = (b"x" * 300 for _ in range(5))  # chunked: no content-length to go by
        resp = c.post("/v1/messages", content=chunks, headers=key(small))
        assert resp.status_code == 413
        assert c.post("/v1/messages", json=MESSAGE, headers=key(small)).status_code == 200
    assert len(api.requests) == 1


def _raw(gw: ModelGateway, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(gw.socket_path))
        sock.sendall(request)
        return _answer(sock)


def test_an_absolute_url_is_refused(api, gateway):
    answer = _raw(gateway, _raw_request(gateway, "http://evil.example/v1/messages"))
    assert answer.startswith(b"HTTP/1.0 403 ")
    assert api.requests == []


def test_ambiguous_framing_is_refused(api, gateway):
    body = json.dumps(MESSAGE).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: sandbox\r\n"
        + f"x-api-key: {gateway.session_key}\r\ncontent-length: {len(body)}\r\n".encode()
        + b"transfer-encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    answer = _raw(gateway, request)
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert api.requests == []


def test_smuggled_credentials_and_forwarding_headers_are_dropped(api, gateway):
    sent = {
        "authorization": f"Bearer {gateway.session_key}",  # the session key, the other way
        "anthropic-admin-key": "sk-ant-admin-smuggled",
        "anthropic-api-key": "sk-ant-smuggled",
        "x-goog-api-key": "smuggled",
        "x_api_key": "sk-ant-smuggled",
        "x-anthropic-apikey": "smuggled",
        "x-amz-security-token": "smuggled",
        "cookie": "session=smuggled",
        "proxy-authorization": "Basic smuggled",
        "proxy-connection": "keep-alive",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-host": "evil.example",
        "forwarded": "for=10.0.0.1",
        "x-real-ip": "10.0.0.1",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219",
        "x-claude-code-agent-id": "agent-1",
        "user-agent": "claude-cli/2.1.332 (external, sdk-cli)",
    }
    with client(gateway) as c:
        resp = c.post("/v1/messages", json=MESSAGE, headers=sent)
    assert resp.status_code == 200
    (request,) = api.requests
    forwarded = request.headers
    assert forwarded["x-api-key"] == REAL_KEY
    assert "smuggled" not in json.dumps(forwarded)
    for name in (
        "authorization",
        "cookie",
        "proxy-authorization",
        "proxy-connection",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ):
        assert name not in forwarded
    assert forwarded["anthropic-version"] == "2023-06-01"
    assert forwarded["anthropic-beta"] == "claude-code-20250219"
    assert forwarded["x-claude-code-agent-id"] == "agent-1"  # subagent classification needs it
    assert request.kind == "subagent"


def test_a_second_key_header_does_not_get_through(api, gateway):
    with client(gateway) as c:
        twice = [("x-api-key", gateway.session_key), ("x-api-key", "sk-ant-mine")]
        resp = c.post("/v1/messages", json=MESSAGE, headers=twice)
    assert resp.status_code == 200
    (request,) = api.requests
    assert request.headers["x-api-key"] == REAL_KEY


def test_allowed_models(api, make_gateway):
    gw = make_gateway(allowed_models=["claude-sonnet-5-5", "haiku"])
    with client(gw) as c:
        for model in ("claude-sonnet-5-5", "claude-sonnet-4-5-20250929", "claude-haiku-4-5"):
            body = dict(MESSAGE, model=model)
            assert c.post("/v1/messages", json=body, headers=key(gw)).status_code == 200
        for model in ("claude-opus-5-5", "claude-fable-5-1", None):
            resp = c.post("/v1/messages", json=dict(MESSAGE, model=model), headers=key(gw))
            assert resp.status_code == 400, model
            assert resp.json()["error"]["type"] == "invalid_request_error"
        resp = c.post(
            "/v1/messages/count_tokens",
            json=dict(MESSAGE, model="claude-opus-5-5"),
            headers=key(gw),
        )
        assert resp.status_code == 400
        assert "not allowed" in resp.json()["error"]["message"]
        assert c.post("/v1/messages", content=b"not json", headers=key(gw)).status_code == 400
    assert len(api.requests) == 3


# --------------------------------------------------------------------------- what passes

# What the pinned CLI (2.1.332) sends in every request we observed (tests/standins/anthropic.py).
CLI_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "per-turn-control-2026-07-01,mid-conversation-tool-changes-2026-07-01,"
    "thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,effort-2025-11-24,"
    "thinking-display-updates-2026-08-18"
)
CLI_MESSAGE = dict(
    MESSAGE,
    max_tokens=128000,
    system=[
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
    ],
    tools=[
        {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}},
        {
            "name": "Skill",
            "description": "A skill",
            "input_schema": {"type": "object"},
            "defer_loading": True,
        },
    ],
    messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "README.md"}],
                }
            ],
        },
    ],
    thinking={"type": "adaptive", "display": "updates"},
    context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    output_config={"effort": "medium"},
    metadata={"user_id": '{"device_id":"d","account_uuid":"","session_id":"s"}'},
)
ATTACKER = "https://attacker.example/collect"
_IMAGE_BY_URL = {"type": "image", "source": {"type": "url", "url": ATTACKER}}
HOSTILE_BODIES = {
    "mcp_servers": dict(MESSAGE, mcp_servers=[{"type": "url", "url": ATTACKER, "name": "x"}]),
    "container": dict(MESSAGE, container="container_011CQUqJ1CBhe3VkBXK6e1rF"),
    "web_fetch": dict(MESSAGE, tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}]),
    "web_search": dict(MESSAGE, tools=[{"type": "web_search_20250305", "name": "web_search"}]),
    "code_execution": dict(
        MESSAGE, tools=[{"type": "code_execution_20250825", "name": "code_execution"}]
    ),
    "bash_tool": dict(MESSAGE, tools=[{"type": "bash_20250124", "name": "bash"}]),
    "text_editor": dict(
        MESSAGE, tools=[{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]
    ),
    "computer": dict(
        MESSAGE,
        tools=[
            {
                "type": "computer_20250124",
                "name": "computer",
                "display_width_px": 1024,
                "display_height_px": 768,
            }
        ],
    ),
    "mcp_toolset": dict(MESSAGE, tools=[{"type": "mcp_toolset", "mcp_server_name": "x"}]),
    "tool_search": dict(
        MESSAGE, tools=[{"type": "tool_search_tool_regex_20251119", "name": "tool_search"}]
    ),
    "image_by_url": dict(MESSAGE, messages=[{"role": "user", "content": [_IMAGE_BY_URL]}]),
    "document_by_url_in_a_tool_result": dict(
        MESSAGE,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {"type": "document", "source": {"type": "url", "url": ATTACKER}}
                        ],
                    }
                ],
            }
        ],
    ),
    "file_by_id": dict(
        MESSAGE,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "file", "file_id": "file_011"}}
                ],
            }
        ],
    ),
    "server_tool_use_block": dict(
        MESSAGE,
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "web_fetch",
                        "input": {"url": ATTACKER},
                    }
                ],
            },
        ],
    ),
    "image_by_url_in_system": dict(MESSAGE, system=[_IMAGE_BY_URL]),
    "not_an_object": ["model", "claude-sonnet-5-5"],
}


def test_what_the_pinned_cli_sends_passes(api, gateway):
    api.script([Text("fine")])
    with client(gateway) as c:
        resp = c.post(
            "/v1/messages?beta=true",
            json=CLI_MESSAGE,
            headers=key(gateway) | {"anthropic-beta": CLI_BETAS},
        )
        assert resp.status_code == 200, resp.text
        resp = c.post(
            "/v1/messages/count_tokens?beta=true",
            json=CLI_MESSAGE,
            headers=key(gateway) | {"anthropic-beta": "token-counting-2024-11-01"},
        )
        assert resp.status_code == 200, resp.text
    (sent, _) = api.requests
    assert sent.body == CLI_MESSAGE  # no budget: passed as it came
    assert sent.headers["anthropic-beta"] == CLI_BETAS


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_server_side_tools_and_connections_never_reach_the_api(api, gateway, name):
    """A steered agent asks the API to fetch, search, run code or reach an MCP server for it."""
    with client(gateway) as c:
        for path in ("/v1/messages?beta=true", "/v1/messages/count_tokens"):
            resp = c.post(path, json=HOSTILE_BODIES[name], headers=key(gateway))
            assert resp.status_code == 400, resp.text
            assert resp.json()["type"] == "error"
            assert resp.json()["error"]["type"] == "invalid_request_error"
            assert resp.headers["x-should-retry"] == "false"
    assert api.requests == []


@pytest.mark.parametrize(
    "betas",
    [
        ("mcp-client-2025-04-04",),
        (CLI_BETAS + ",mcp-client-2025-11-20",),
        (CLI_BETAS, "files-api-2025-04-14"),
        ("code-execution-2025-08-25",),
        ("web-fetch-2025-09-10",),
        ("advisor-tool-2026-03-01",),
    ],
)
def test_beta_flags_outside_the_allowlist_never_reach_the_api(api, gateway, betas):
    headers = [("x-api-key", gateway.session_key)] + [("anthropic-beta", b) for b in betas]
    with client(gateway) as c:
        resp = c.post("/v1/messages?beta=true", json=MESSAGE, headers=headers)
    assert resp.status_code == 400, resp.text
    assert "beta" in resp.json()["error"]["message"]
    assert api.requests == []


class _GreedyModel:
    """An upstream that writes as much as it may: every answer's output is its `max_tokens`.

    It records the `max_tokens` it was asked for, and how many requests it served at once.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked: list[int] = []
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    outer.asked.append(body["max_tokens"])
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay)
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.end_headers()
                    start = {
                        "type": "message_start",
                        "message": {
                            "model": body["model"],
                            "usage": {"input_tokens": 0, "output_tokens": 1},
                        },
                    }
                    delta = {
                        "type": "message_delta",
                        "usage": {"output_tokens": body["max_tokens"]},
                    }
                    for name, data in (
                        ("message_start", start),
                        ("message_delta", delta),
                        ("message_stop", {"type": "message_stop"}),
                    ):
                        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                finally:
                    with lock:
                        outer.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def greedy():
    upstream = _GreedyModel()
    yield upstream
    upstream.close()


OPUS_OUT = pricing.price("claude-opus-5-5").output / pricing.MTOK  # USD per output token


def test_max_tokens_is_lowered_to_what_the_budget_left_can_pay(greedy, make_gateway):
    budget = 0.01  # 500 output tokens of Opus 5.5
    gw = make_gateway(upstream=greedy.url, budget_usd=budget)
    resp, _ = stream(gw, dict(CLI_MESSAGE, model="claude-opus-5-5"))  # asks for 128,000
    assert resp.status_code == 200
    assert greedy.asked == [int(budget / OPUS_OUT)]
    assert gw.usage.cost_usd <= budget + 1e-9
    resp, _ = stream(gw, dict(CLI_MESSAGE, model="claude-opus-5-5"))
    assert resp.status_code == 402
    assert len(greedy.asked) == 1


def test_a_request_the_budget_left_cannot_pay_at_all_is_refused(greedy, make_gateway):
    gw = make_gateway(upstream=greedy.url, budget_usd=OPUS_OUT * 5)  # 5 tokens: nothing useful
    with client(gw) as c:
        resp = c.post(
            "/v1/messages", json=dict(CLI_MESSAGE, model="claude-opus-5-5"), headers=key(gw)
        )
    assert resp.status_code == 402
    assert resp.json()["error"]["type"] == "billing_error"
    assert "budget left cannot pay" in resp.json()["error"]["message"]
    assert greedy.asked == []


def test_parallel_requests_cannot_overshoot_the_budget(make_gateway):
    """Eight requests at once, against a budget that pays for one of them."""
    greedy = _GreedyModel(delay=0.5)
    try:
        budget = OPUS_OUT * 1500
        gw = make_gateway(upstream=greedy.url, budget_usd=budget)
        body = dict(CLI_MESSAGE, model="claude-opus-5-5", max_tokens=1000)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: stream(gw, body)[0].status_code, range(8)))
        assert sum(greedy.asked) * OPUS_OUT <= budget * (1 + 1e-9), greedy.asked
        assert gw.usage.cost_usd <= budget * (1 + 1e-9)
        assert statuses.count(200) == len(greedy.asked) >= 1
        assert set(statuses) <= {200, 402}
    finally:
        greedy.close()


def test_requests_in_flight_per_session_are_limited(make_gateway):
    greedy = _GreedyModel(delay=0.3)
    try:
        gw = make_gateway(upstream=greedy.url)
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: stream(gw)[0].status_code, range(12)))
        assert statuses == [200] * 12  # the others waited for their turn
        assert 1 <= greedy.most_in_flight <= jobs.gateway.proxy.MAX_IN_FLIGHT
    finally:
        greedy.close()


# --------------------------------------------------------------------------- streaming


class _SlowStream:
    """An upstream that sends message_start, then holds the rest of the answer until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                start = {
                    "type": "message_start",
                    "message": {
                        "model": "claude-haiku-4-5",
                        "usage": {"input_tokens": 100, "output_tokens": 1},
                    },
                }
                self.event("message_start", start)
                outer.release.wait(10)
                self.event(
                    "message_delta", {"type": "message_delta", "usage": {"output_tokens": 50}}
                )
                self.event("message_stop", {"type": "message_stop"})
                outer.finished.set()

            def event(self, name: str, data: dict) -> None:
                with contextlib.suppress(OSError):  # the gateway may have hung up (close)
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow():
    upstream = _SlowStream()
    yield upstream
    upstream.close()


def test_first_event_arrives_before_the_upstream_has_finished(slow, make_gateway):
    gw = make_gateway(upstream=slow.url)
    with client(gw) as c, c.stream("POST", "/v1/messages", json=MESSAGE, headers=key(gw)) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "event: message_start"
        assert json.loads(next(lines)[5:])["type"] == "message_start"
        assert not slow.finished.is_set()  # the gateway passed it on while upstream still works
        # ...and counts it as it passes (just after passing it on)
        wait_for(lambda: gw.usage.input_tokens == 100, 5, what="message_start counted")
        slow.release.set()
        rest = list(lines)
    assert "event: message_stop" in rest
    assert (gw.usage.input_tokens, gw.usage.output_tokens) == (100, 50)


def test_close_cuts_an_answer_in_flight(slow, make_gateway):
    gw = make_gateway(upstream=slow.url)
    with client(gw) as c, c.stream("POST", "/v1/messages", json=MESSAGE, headers=key(gw)) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "event: message_start"
        gw.close()
        try:
            rest = list(lines)
        except httpx.HTTPError:
            rest = []
    assert "event: message_stop" not in rest


def test_an_answer_the_sandbox_hung_up_on_is_still_counted(slow, make_gateway):
    gw = make_gateway(upstream=slow.url)
    with client(gw) as c, c.stream("POST", "/v1/messages", json=MESSAGE, headers=key(gw)) as resp:
        assert next(resp.iter_lines()) == "event: message_start"
    slow.release.set()  # the rest comes after the sandbox left: read, not sent, and counted
    wait_for(lambda: gw.usage.output_tokens == 50, 5, what="the rest of the answer counted")
    assert gw.usage.input_tokens == 100


def test_many_concurrent_requests_all_succeed(api, make_gateway):
    gw = make_gateway()
    api.script([Text(f"answer {i}", delay=0.2) for i in range(20)])

    def one(_: int) -> tuple[int, list[dict]]:
        resp, events = stream(gw)
        return resp.status_code, events

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [status for status, _ in results] == [200] * 20
    assert all(events[-1]["type"] == "message_stop" for _, events in results)
    texts = sorted(
        e["delta"]["text"]
        for _, events in results
        for e in events
        if e["type"] == "content_block_delta"
    )
    assert len(api.message_requests()) == 20 and len(texts) >= 20
    assert gw.usage.output_tokens == sum(reported_usage(ev)["output_tokens"] for _, ev in results)


# --------------------------------------------------------------------------- secrets


def test_no_secret_in_any_answer_log_line_or_error(api, make_gateway, gateway_log, monkeypatch):
    gw = make_gateway(budget_usd=0.0001)
    seen: list[str] = [repr(gw)]
    with client(gw) as c:
        for method, path, headers in [
            ("POST", "/v1/messages", key(gw)),  # spends the budget
            ("POST", "/v1/messages", key(gw)),  # refused: budget
            ("POST", "/v1/messages", {"x-api-key": REAL_KEY}),
            ("POST", f"/v1/{gw.session_key}", key(gw)),
            ("GET", f"/{REAL_KEY}", {}),
        ]:
            resp = c.request(method, path, json=MESSAGE, headers=headers)
            seen += [resp.text, str(resp.headers)]
    with socket.socket(socket.AF_UNIX) as sock:  # a request line the stdlib cannot parse
        sock.settimeout(10)
        sock.connect(str(gw.socket_path))
        sock.sendall(f"GARBAGE {gw.session_key} {REAL_KEY}\r\n\r\n".encode())
        seen.append(_answer(sock).decode())

    # A key the HTTP library refuses to send (a stray newline) must not show up in its error.
    broken = make_gateway()
    broken.backend = AnthropicApiKey(broken.upstream, REAL_KEY + "\n")
    with client(broken) as c:
        resp = c.post("/v1/messages", json=MESSAGE, headers=key(broken))
        assert resp.status_code == 502
        seen += [resp.text, str(resp.headers)]

    # An unexpected failure: its traceback is logged, scrubbed.
    def explode(*args, **kwargs):
        raise RuntimeError(f"cannot use {REAL_KEY} for {broken.session_key}")

    monkeypatch.setattr(broken.client, "stream", explode)
    with client(broken) as c, pytest.raises(httpx.HTTPError):
        c.post("/v1/messages", json=MESSAGE, headers=key(broken))

    text = "\n".join(seen) + gateway_log.text
    assert "RuntimeError: cannot use [redacted] for [redacted]" in gateway_log.text
    assert "refused" in gateway_log.text and "402" in gateway_log.text
    for secret in (REAL_KEY, gw.session_key, broken.session_key):
        assert secret not in text
        assert secret[-12:] not in text


# --------------------------------------------------------------------------- the real CLI


class TcpRelay:
    """127.0.0.1:<port> -> the gateway's socket, as the relay in the sandbox image does it."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        gw = socket.socket(socket.AF_UNIX)
        try:
            gw.connect(str(self.socket_path))
        except OSError:
            conn.close()
            return
        threading.Thread(target=self._pipe, args=(gw, conn), daemon=True).start()
        self._pipe(conn, gw)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="session")
def claude_bin() -> str:
    path = os.environ.get("CLAUDE_BIN") or str(NPM / ".bin" / "claude")
    if not os.access(path, os.X_OK):
        pytest.fail("the real Claude Code CLI is required: run `bash scripts/test-deps.sh`")
    return path


def run_claude(claude_bin: str, gw: ModelGateway, cwd: Path, home: Path) -> dict:
    """`claude -p` through a relay to the gateway; its result event."""
    relay = TcpRelay(gw.socket_path)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": relay.url,
        "ANTHROPIC_API_KEY": gw.session_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "IS_SANDBOX": "1",
        "CLAUDE_CODE_MAX_RETRIES": "4",  # production's default: a retried refusal would show
    }
    try:
        proc = subprocess.run(
            [
                claude_bin,
                "-p",
                "Add a NOTES.md",
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "--max-turns",
                "5",
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    finally:
        relay.close()
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e.get("type") == "result"]
    assert results, f"no result: rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    assert proc.returncode == 1
    return results[-1]


def refusals(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if r.getMessage().startswith("gateway: refused")]


def test_cli_run_ends_when_the_budget_is_spent(
    claude_bin, api, make_gateway, gateway_log, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    notes = work / "NOTES.md"
    api.script([ToolUse("Write", {"file_path": str(notes), "content": "notes\n"}), Text("done")])
    gw = make_gateway(budget_usd=0.001)

    started = time.monotonic()
    result = run_claude(claude_bin, gw, work, tmp_path / "home")

    assert notes.read_text() == "notes\n"  # the first turn ran...
    assert len(api.message_requests()) == 1  # ...and the next request never left the gateway
    assert result["is_error"] is True
    assert "API Error: 402" in result["result"] and "budget is spent" in result["result"]
    assert [m.split(": ", 2)[-1][:3] for m in refusals(gateway_log)] == ["402"]  # not retried
    assert time.monotonic() - started < 60
    # The gateway counted what the CLI itself was told.
    usage = gw.usage
    assert usage.input_tokens == result["usage"]["input_tokens"] > 0
    assert usage.output_tokens == result["usage"]["output_tokens"] > 0
    assert list(usage.by_model) == list(result["modelUsage"]) == ["claude-opus-5-5"]
    # ...and priced it as the CLI does (Opus 5.5 at $4/$20).
    assert usage.cost_usd == pytest.approx(result["total_cost_usd"]) and usage.cost_usd >= 0.001


def test_cli_run_ends_at_once_when_the_session_expired(
    claude_bin, api, make_gateway, gateway_log, tmp_path
):
    gw = make_gateway(expires_at=time.monotonic())
    result = run_claude(claude_bin, gw, tmp_path, tmp_path / "home")
    assert result["is_error"] is True
    assert "401 session expired" in result["result"]
    assert len(refusals(gateway_log)) == 1  # not retried, though 401s are by default
    assert api.requests == []
