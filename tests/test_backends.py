"""The gateway's model backends (jobs/gateway/backends.py), each in front of a real stand-in that
checks the credential the gateway added: an API key, a subscription's bearer and its beta, an LLM
gateway's bearer, Bedrock's SigV4 signature (recomputed with botocore's signer) and Vertex's
access token (from a token endpoint that verifies google-auth's signed JWT).

The real CLI in the sandbox, for each backend: tests/test_backends_sandbox.py.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from jobs.common.settings import SECRET_OWNERS, ConfigError, GatewaySettings
from jobs.gateway import pricing
from jobs.gateway.backends import OAUTH_BETA, configured, probe, selected
from jobs.gateway.proxy import Allowance, ModelGateway, _EventStreamUsage, _MessageTally
from tests.standins.anthropic import Text
from tests.standins.bedrock import chunk_event
from tests.standins.model_backends import KINDS, MESSAGE, Kit, backend_kit, request_for
from tests.support import reported_usage

BEDROCK_MODEL = "eu.anthropic.claude-sonnet-5-5"


@pytest.fixture(params=KINDS)
def kit(request, tmp_path):
    with backend_kit(request.param, tmp_path) as kit:
        yield kit


@pytest.fixture
def bedrock(tmp_path):
    with backend_kit("bedrock", tmp_path) as kit:
        yield kit


@pytest.fixture
def vertex(tmp_path):
    with backend_kit("vertex", tmp_path) as kit:
        yield kit


@pytest.fixture
def gateway_log(caplog):
    caplog.set_level(logging.INFO, logger="jobs.gateway.proxy")
    return caplog


def open_gateway(kit: Kit, path: Path, settings: GatewaySettings | None = None, **allowance):
    return ModelGateway(path, selected(settings or kit.settings()), Allowance(**allowance))


def send(gw: ModelGateway, path: str, body: dict, key: str | None = None, method: str = "POST"):
    transport = httpx.HTTPTransport(uds=str(gw.socket_path))
    headers = {"x-api-key": gw.session_key if key is None else key}
    with httpx.Client(transport=transport, base_url="http://sandbox", timeout=60) as client:
        return client.request(method, path, json=body, headers=headers)


def stream_usage(answer: httpx.Response) -> dict:
    """The usage the answer reported, read the way the CLI reads it (SSE, or AWS event stream)."""
    if answer.headers["content-type"].startswith("application/vnd.amazon.eventstream"):
        frames = EventStreamBuffer()
        frames.add_data(answer.content)
        events = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"])) for m in frames]
    else:
        lines = answer.text.splitlines()
        events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    return reported_usage(events)


# --------------------------------------------------------------------------- selection


def test_selection_follows_the_clis_precedence():
    api_key, token, bearer = "cctest-a-key", "cctest-a-token", "cctest-a-bearer"
    both = GatewaySettings.parse(ANTHROPIC_API_KEY=api_key, CLAUDE_CODE_OAUTH_TOKEN=token)
    assert configured(both) == ["anthropic-api-key", "claude-subscription"]
    assert selected(both).name == "anthropic-api-key"
    everything = GatewaySettings.parse(
        ANTHROPIC_API_KEY=api_key,
        CLAUDE_CODE_OAUTH_TOKEN=token,
        ANTHROPIC_AUTH_TOKEN=bearer,
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",
        CLAUDE_CODE_USE_BEDROCK="1",
        AWS_REGION="eu-west-1",
        AWS_ACCESS_KEY_ID="CCTESTKEYID",
        AWS_SECRET_ACCESS_KEY="cctest-secret",
        CLAUDE_CODE_USE_VERTEX="1",
    )
    assert configured(everything) == [
        "bedrock",
        "vertex",
        "llm-gateway",
        "anthropic-api-key",
        "claude-subscription",
    ]
    assert selected(everything).name == "bedrock"
    assert selected(everything).describe() == "Amazon Bedrock in eu-west-1"
    gateway = GatewaySettings.parse(
        ANTHROPIC_API_KEY=api_key,
        ANTHROPIC_AUTH_TOKEN=bearer,
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",
    )
    assert selected(gateway).name == "llm-gateway"
    subscription = GatewaySettings.parse(CLAUDE_CODE_OAUTH_TOKEN=token)
    assert selected(subscription).name == "claude-subscription"
    for settings in (both, everything, gateway, subscription):
        described = selected(settings).describe()
        assert "\n" not in described
        assert not any(s in described for s in (api_key, token, bearer, "cctest-secret"))


def test_no_backend_is_one_clear_line_naming_the_choices():
    with pytest.raises(ConfigError) as error:
        selected(GatewaySettings.parse())
    message = str(error.value)
    assert message.startswith("no model backend is configured: set ANTHROPIC_API_KEY;")
    for choice in ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "AWS_REGION", "CLOUD_ML_"):
        assert choice in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="no model backend is configured"):
        GatewaySettings.parse().require(GatewaySettings.REQUIRED)
    assert configured(GatewaySettings.parse()) == []


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"CLAUDE_CODE_USE_BEDROCK": "1"}, "AWS_REGION is not"),
        (
            {"CLAUDE_CODE_USE_BEDROCK": "1", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "X"},
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together",
        ),
        ({"CLAUDE_CODE_USE_VERTEX": "1", "CLOUD_ML_REGION": "us-east5"}, "PROJECT_ID is not"),
        (
            {
                "CLAUDE_CODE_USE_VERTEX": "1",
                "CLOUD_ML_REGION": "us-east5",
                "ANTHROPIC_VERTEX_PROJECT_ID": "p",
                "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json",
            },
            "GOOGLE_APPLICATION_CREDENTIALS: not a usable service-account key",
        ),
        ({"ANTHROPIC_AUTH_TOKEN": "cctest-bearer"}, "ANTHROPIC_BASE_URL .* is not"),
    ],
)
def test_an_incomplete_backend_is_a_clear_error(variables, problem):
    with pytest.raises(ConfigError, match=problem):
        selected(GatewaySettings.parse(**variables))


def test_every_backend_secret_is_the_gateways_alone():
    for name in (
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        assert SECRET_OWNERS[name] == "gateway"


def test_the_settings_teach_the_redactor_every_credential(bedrock, vertex):
    assert set(bedrock.fixed_secrets) <= set(bedrock.settings().secrets())
    pem_line = vertex.fixed_secrets[0]
    assert any(pem_line in s for s in vertex.settings().secrets())  # from the key file


# --------------------------------------------------------------------------- every backend


def test_the_gateway_adds_the_credential_and_meters(kit, tmp_path):
    kit.api.script([Text("hello through " + kit.name)])
    path, body = request_for(kit)
    with open_gateway(kit, tmp_path / "gw.sock", budget_usd=5.0) as gw:
        answer = send(gw, path, body)
        assert answer.status_code == 200, answer.text
        reported = stream_usage(answer)
        usage = gw.usage
    assert kit.refused() == 0
    (asked,) = kit.api.message_requests()
    assert gw.session_key not in json.dumps(asked.headers)
    assert usage.requests == 1
    assert usage.input_tokens == reported["input_tokens"] > 0
    assert usage.output_tokens == reported["output_tokens"] > 1
    model = asked.body["model"]
    assert usage.cost_usd == pytest.approx(pricing.cost_usd(model, reported))


def test_every_backend_refuses_a_request_without_the_session_key(kit, tmp_path):
    path, body = request_for(kit)
    with open_gateway(kit, tmp_path / "gw.sock") as gw:
        for key in ("", "ccgw-guess", *kit.secrets):
            answer = send(gw, path, body, key=key)
            assert answer.status_code == 401, key
            assert answer.headers["x-should-retry"] == "false"
    assert kit.api.requests == []


def test_a_wrong_credential_is_refused_upstream_and_reported(kit, tmp_path, gateway_log):
    path, body = request_for(kit)
    with open_gateway(kit, tmp_path / "gw.sock", settings=kit.wrong_settings()) as gw:
        answer = send(gw, path, body)
    assert answer.status_code in (401, 403, 502)
    assert kit.api.message_requests() == []  # the model was never asked
    assert kit.refused() >= 1
    reported = [r.getMessage() for r in gateway_log.records]
    assert any(
        f"{kit.name} refused the gateway's credential" in line
        or f"{kit.name}: no credential" in line
        for line in reported
    ), reported
    for secret in kit.secrets:
        assert secret not in gateway_log.text and secret not in answer.text


def test_probe_answers_true_with_the_credential_and_false_without(kit):
    ok, reason = probe(kit.settings(), timeout=30)
    assert ok, reason
    assert reason.endswith(": answered")
    (asked,) = kit.api.message_requests()
    assert asked.body["max_tokens"] == 1 and "haiku" in asked.body["model"]
    ok, reason = probe(kit.wrong_settings(), timeout=30)
    assert not ok
    assert "\n" not in reason and reason.startswith(selected(kit.settings()).describe()[:12])
    for secret in kit.secrets + list(kit.wrong.values()):
        assert secret not in reason


def test_probe_of_an_unreachable_backend_is_false_in_one_line(tmp_path):
    settings = GatewaySettings.parse(
        ANTHROPIC_API_KEY="cctest-unreachable-key", ANTHROPIC_BASE_URL="http://127.0.0.1:9"
    )
    ok, reason = probe(settings, timeout=5)
    assert not ok and "not reached" in reason and "cctest-unreachable-key" not in reason
    assert probe(GatewaySettings.parse()) == (
        False,
        str(pytest.raises(ConfigError, selected, GatewaySettings.parse()).value),
    )


# ------------------------------------------------------------------------ the Anthropic API modes


@pytest.mark.parametrize("name", ["claude-subscription", "llm-gateway"])
def test_a_bearer_backend_never_sends_an_api_key(name, tmp_path):
    with backend_kit(name, tmp_path) as kit:
        kit.api.script([Text("ok")])
        path, body = request_for(kit)
        with open_gateway(kit, tmp_path / "gw.sock") as gw:
            assert send(gw, path, body).status_code == 200
        (asked,) = kit.api.message_requests()
    assert "x-api-key" not in asked.headers
    assert asked.headers["authorization"] == "Bearer " + kit.fixed_secrets[0]
    betas = asked.headers.get("anthropic-beta", "").split(",")
    assert (OAUTH_BETA in betas) == (name == "claude-subscription")


def test_the_stand_in_refuses_an_api_key_where_a_bearer_belongs(tmp_path):
    with backend_kit("claude-subscription", tmp_path) as kit:
        token = kit.fixed_secrets[0]
        with httpx.Client(base_url=kit.api.url) as client:
            both = {"authorization": f"Bearer {token}", "x-api-key": token}
            no_beta = {"authorization": f"Bearer {token}"}
            ok = dict(no_beta, **{"anthropic-beta": OAUTH_BETA})
            body = dict(MESSAGE, model="claude-haiku-4-5")
            assert client.post("/v1/messages", json=body, headers=both).status_code == 401
            assert client.post("/v1/messages", json=body, headers=no_beta).status_code == 401
            assert client.post("/v1/messages", json=body, headers=ok).status_code == 200


# --------------------------------------------------------------------------- Bedrock


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/inference-profiles?type=SYSTEM_DEFINED"),  # the AWS SDK's, before the model
        ("POST", f"/model/{BEDROCK_MODEL}/converse"),
        ("POST", f"/model/{BEDROCK_MODEL}/converse-stream"),
        ("POST", f"/model/{BEDROCK_MODEL}/invoke?x=1"),
        ("POST", "/model/a%2Fb/invoke"),
        ("POST", "/guardrail/x/version/1/apply"),
        ("POST", "/async-invoke"),
    ],
)
def test_bedrock_passes_only_the_invoke_paths(bedrock, tmp_path, method, path):
    with open_gateway(bedrock, tmp_path / "gw.sock") as gw:
        body = dict(MESSAGE, anthropic_version="bedrock-2023-05-31")
        answer = send(gw, path, body, method=method)
    assert answer.status_code == 403
    assert bedrock.api.requests == [] and bedrock.refused() == 0


def test_bedrock_signature_is_verified_by_the_stand_in(bedrock, tmp_path):
    bedrock.api.script([Text("signed")])
    path, body = request_for(bedrock, stream=False)
    with open_gateway(bedrock, tmp_path / "gw.sock") as gw:
        answer = send(gw, path, body)
    assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "signed"
    (asked,) = bedrock.api.message_requests()
    assert asked.body["model"] == BEDROCK_MODEL
    assert gw.usage.requests == 1 and gw.usage.output_tokens > 0  # a JSON answer's usage


def test_bedrock_body_checks_are_those_of_the_messages_api(bedrock, tmp_path):
    path, body = request_for(bedrock)
    bad = [
        dict(body, anthropic_beta=["files-api-2025-04-14"]),  # a beta outside the allowlist
        dict(body, anthropic_beta="context-1m-2025-08-07"),
        dict(body, tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        dict(body, mcp_servers=[{"type": "url", "url": "https://example.com"}]),
        dict(body, max_tokens=0),
    ]
    with open_gateway(bedrock, tmp_path / "gw.sock", allowed_models=["haiku"]) as gw:
        for refused in bad:
            assert send(gw, path, refused).status_code == 400, refused
        assert send(gw, path, body).status_code == 400  # sonnet: not an allowed model
        assert "not allowed" in send(gw, path, body).text
    assert bedrock.api.requests == []


def test_bedrock_budget_is_metered_from_the_event_stream(bedrock, tmp_path):
    # The first answer is longer than the budget pays for (the stand-in ignores max_tokens).
    bedrock.api.script([Text("a long first answer " * 30), Text("never")])
    path, body = request_for(bedrock, model="claude-opus-5-5")
    with open_gateway(bedrock, tmp_path / "gw.sock", budget_usd=0.001) as gw:
        first = send(gw, path, body)
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/vnd.amazon.eventstream"
        reported = stream_usage(first)
        assert gw.usage.output_tokens == reported["output_tokens"]
        assert gw.usage.cost_usd == pytest.approx(
            pricing.cost_usd("eu.anthropic.claude-opus-5-5", reported)
        )
        assert gw.usage.cost_usd > 0.001
        spent = send(gw, path, body)
    assert spent.status_code == 402 and spent.json()["error"]["type"] == "billing_error"
    assert len(bedrock.api.message_requests()) == 1


# --------------------------------------------------------------------------- Vertex


@pytest.mark.parametrize(
    "path",
    [
        "/projects/other-project/locations/europe-west1/publishers/anthropic/models/"
        "claude-sonnet-5-5:streamRawPredict",
        "/projects/cc-test-project/locations/us-east5/publishers/anthropic/models/"
        "claude-sonnet-5-5:streamRawPredict",
        "/projects/cc-test-project/locations/europe-west1/publishers/google/models/"
        "gemini-3:streamGenerateContent",
        "/projects/cc-test-project/locations/europe-west1/publishers/anthropic/models/"
        "claude-sonnet-5-5:predict",
        "/projects/cc-test-project/locations/europe-west1/endpoints/1:rawPredict",
        "/v1/messages",
    ],
)
def test_vertex_passes_only_its_own_projects_predict_paths(vertex, tmp_path, path):
    with open_gateway(vertex, tmp_path / "gw.sock") as gw:
        answer = send(gw, path, dict(MESSAGE, anthropic_version="vertex-2023-10-16"))
    assert answer.status_code == 403
    assert vertex.api.requests == [] and vertex.issued() == []


def test_vertex_token_is_fetched_once_and_counting_tokens_costs_nothing(vertex, tmp_path):
    vertex.api.script([Text("one"), Text("two")])
    path, body = request_for(vertex)
    where = "/projects/cc-test-project/locations/europe-west1/publishers/anthropic/models"
    count = dict(MESSAGE, model="claude-sonnet-5-5", anthropic_version="vertex-2023-10-16")
    with open_gateway(vertex, tmp_path / "gw.sock") as gw:
        assert send(gw, path, body).status_code == 200
        assert send(gw, path, body).status_code == 200
        counted = send(gw, f"{where}/count-tokens:rawPredict", count)
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        assert gw.usage.requests == 2
    assert len(vertex.issued()) == 1  # refreshed only when it runs out


def test_a_vertex_token_endpoint_that_refuses_is_a_502_without_secrets(vertex, tmp_path):
    path, body = request_for(vertex)
    with open_gateway(vertex, tmp_path / "gw.sock", settings=vertex.wrong_settings()) as gw:
        answer = send(gw, path, body)
    assert answer.status_code == 502
    assert "credential" in answer.json()["error"]["message"]


def test_event_stream_usage_takes_any_split_and_survives_a_corrupt_frame(bedrock, tmp_path, caplog):
    start = {
        "type": "message_start",
        "message": {"model": BEDROCK_MODEL, "usage": {"input_tokens": 1200, "output_tokens": 1}},
    }
    delta = {"type": "message_delta", "usage": {"output_tokens": 300}}
    frames = b"".join(chunk_event(json.dumps(e).encode()) for e in (start, delta))
    with open_gateway(bedrock, tmp_path / "gw.sock") as gw:
        parser = _EventStreamUsage(_MessageTally(gw, BEDROCK_MODEL))
        for i in range(len(frames)):
            parser.feed(frames[i : i + 1])
        parser.close()
        assert (gw.usage.input_tokens, gw.usage.output_tokens) == (1200, 300)
        assert gw.usage.cost_usd == pytest.approx(
            pricing.cost_usd(BEDROCK_MODEL, {"input_tokens": 1200, "output_tokens": 300})
        )
        corrupt = bytearray(chunk_event(json.dumps(delta).encode()))
        corrupt[-6] ^= 0xFF  # the payload no longer matches its CRC
        broken = _EventStreamUsage(_MessageTally(gw, BEDROCK_MODEL))
        broken.feed(bytes(corrupt))
        broken.feed(chunk_event(json.dumps(delta).encode()))  # not read after the break
        assert gw.usage.output_tokens == 300
    assert "unreadable event stream" in caplog.text
