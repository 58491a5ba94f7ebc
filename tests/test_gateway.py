"""The model gateway on its Unix socket, in front of the (stand-in) Messages API."""

from __future__ import annotations

import httpx
import pytest

from jobs.gateway import ModelGateway
from tests.standins.anthropic import AnthropicStandIn, Text
from tests.support import free_port

REAL_KEY = "sk-ant-api03-real-key-held-only-by-the-gateway"


@pytest.fixture
def api():
    with AnthropicStandIn(expected_api_key=REAL_KEY) as api:
        yield api


@pytest.fixture
def gateway(tmp_path, api):
    with ModelGateway(tmp_path / "gw.sock", api.url, REAL_KEY) as gw:
        yield gw


def client(gw: ModelGateway) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.socket_path)),
                        base_url="http://sandbox")  # fmt: skip


MESSAGE = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
}


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
    assert api.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/files"), ("POST", "/v1/complete"), ("GET", "/")],
)
def test_refuses_everything_but_the_messages_api(api, gateway, method, path):
    with client(gateway) as c:
        resp = c.request(method, path, headers={"x-api-key": gateway.session_key})
    assert resp.status_code == 403
    assert api.requests == []


def test_unreachable_upstream_is_a_502_not_a_hang(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with ModelGateway(tmp_path / "gw.sock", dead, REAL_KEY) as gw, client(gw) as c:
        resp = c.post("/v1/messages", json=MESSAGE, headers={"x-api-key": gw.session_key})
    assert resp.status_code == 502
    assert REAL_KEY not in resp.text


def test_socket_is_gone_after_close(tmp_path, api):
    gw = ModelGateway(tmp_path / "gw.sock", api.url, REAL_KEY)
    with gw:
        assert gw.socket_path.exists()
    assert not gw.socket_path.exists()
