"""The gateway process: it alone holds the model key and opens per-session gateways on request."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from jobs.common.settings import MODEL_BACKEND_CHOICES, WorkerSettings
from jobs.gateway.backends import selected
from jobs.gateway.service import GatewayError, _call, session_gateway
from tests.standins.anthropic import AnthropicStandIn, Text
from tests.standins.model_backends import backend_kit, request_for
from tests.support import ROOT, wait_for

REAL_KEY = "sk-ant-api03-test-key-of-the-gateway-process"


@pytest.fixture
def api():
    with AnthropicStandIn(expected_api_key=REAL_KEY) as api:
        yield api


@pytest.fixture
def service(tmp_path, api):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_API_KEY=REAL_KEY, ANTHROPIC_BASE_URL=api.url, WORKSPACE_ROOT=str(tmp_path / "ws")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.gateway.service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # The worker's view: no model key at all.
    settings = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path / "ws"))
    wait_for(lambda: settings.gateway_socket.exists(), 20, what="the gateway service")
    yield settings
    proc.terminate()
    output = proc.communicate(timeout=20)[0].decode()
    assert REAL_KEY not in output


def control_dir(settings):
    path = settings.workspace_root / "s-1" / "control"
    path.mkdir(parents=True)
    return path


def test_a_session_gateway_swaps_in_the_key_only_the_service_holds(service, api):
    api.script([Text("hi")])
    sock = control_dir(service) / "gateway.sock"
    with session_gateway(service, "session-1", sock, 1.0, 60) as lease:
        key = lease.key
        assert key.startswith("ccgw-") and REAL_KEY not in key
        assert oct(sock.stat().st_mode & 0o777) == "0o666"
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://sandbox") as client:
            resp = client.post(
                "/v1/messages",
                headers={"x-api-key": key},
                json={
                    "model": "claude-sonnet-5-5",
                    "max_tokens": 16,
                    "stream": False,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        assert resp.status_code == 200
    assert api.requests[-1].api_key == REAL_KEY
    assert not sock.exists(), "closing the session removes its socket"
    # The gateway's own account comes back at the close: what the comments report.
    assert lease.usage["requests"] == 1 and lease.usage["cost_usd"] > 0


def test_sockets_only_inside_a_sessions_control_directory(service, tmp_path):
    with (
        pytest.raises(GatewayError, match="only as gateway.sock under WORKSPACE_ROOT"),
        session_gateway(service, "s2", tmp_path / "elsewhere" / "gateway.sock", None, 60),
    ):
        pass
    sneaky = service.workspace_root / "s-2" / "control" / ".." / ".." / ".." / "gateway.sock"
    with pytest.raises(GatewayError), session_gateway(service, "s3", sneaky, None, 60):
        pass
    with (
        pytest.raises(GatewayError),
        session_gateway(service, "s4", control_dir(service) / "other.sock", None, 60),
    ):
        pass


def test_the_control_socket_is_the_services_users_alone(service):
    assert oct(service.gateway_socket.stat().st_mode & 0o777) == "0o600"


def test_no_service_is_a_clear_error(tmp_path):
    settings = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path))
    with pytest.raises(GatewayError, match="the gateway service is not running"):
        _call(settings, {"op": "open"}, wait=0.3)


def test_the_models_a_session_may_use_reach_its_gateway(service, api):
    api.script([Text("hi")])
    sock = control_dir(service) / "gateway.sock"
    with session_gateway(service, "session-m", sock, 1.0, 60, models=["haiku"]) as lease:
        key = lease.key
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://sandbox") as client:

            def ask(model: str) -> httpx.Response:
                return client.post(
                    "/v1/messages",
                    headers={"x-api-key": key},
                    json={
                        "model": model,
                        "max_tokens": 16,
                        "stream": False,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )

            refused = ask("claude-opus-5-5")
            assert refused.status_code == 400 and "not allowed" in refused.text
            assert ask("claude-haiku-4-5").status_code == 200
    assert [r.body["model"] for r in api.requests] == ["claude-haiku-4-5"]


def test_a_repositorys_model_narrows_what_the_service_allows():
    from jobs.session.gate import allowed_models, model_allowed
    from jobs.session.repo_config import RepoConfig

    anything = WorkerSettings.parse()
    assert allowed_models(anything, RepoConfig()) is None
    assert allowed_models(anything, RepoConfig(model="claude-opus-5-5")) == ["haiku", "opus"]
    service = WorkerSettings.parse(CLAUDE_ALLOWED_MODELS="sonnet, haiku")
    assert allowed_models(service, RepoConfig()) == ["haiku", "sonnet"]
    assert allowed_models(service, RepoConfig(model="sonnet")) == ["haiku", "sonnet"]
    assert not model_allowed(service, RepoConfig(model="opus"))
    assert model_allowed(service, RepoConfig(model="claude-sonnet-5-5"))


def start_service(tmp_path, variables: dict[str, str]) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "AWS_", "CLAUDE_CODE_", "GOOGLE_", "CLOUD_ML_"))
    }
    env.update(variables, WORKSPACE_ROOT=str(tmp_path / "ws"))
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.gateway.service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("name", ["bedrock", "vertex", "claude-subscription"])
def test_the_open_answer_carries_the_clis_env_for_the_backend_and_no_secret(tmp_path, name):
    with backend_kit(name, tmp_path) as kit:
        kit.api.script([Text("hi")])
        proc = start_service(tmp_path, kit.env)
        try:
            settings = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path / "ws"))
            wait_for(lambda: settings.gateway_socket.exists(), 20, what="the gateway service")
            sock = control_dir(settings) / "gateway.sock"
            relay = "http://127.0.0.1:8787"
            with session_gateway(settings, "s-env", sock, 1.0, 60, relay=relay) as lease:
                expected = selected(kit.settings()).cli_env(relay, lease.key)
                assert lease.cli_env == expected
                path, body = request_for(kit)
                transport = httpx.HTTPTransport(uds=str(sock))
                with httpx.Client(transport=transport, base_url="http://sandbox") as client:
                    answer = client.post(path, json=body, headers={"x-api-key": lease.key})
                assert answer.status_code == 200, answer.text
            assert lease.usage["requests"] == 1
        finally:
            proc.terminate()
            output = proc.communicate(timeout=20)[0].decode()
        secrets = kit.secrets
    shown = repr(lease.cli_env) + output
    assert secrets and not [s for s in secrets if s in shown]


def test_a_service_with_no_backend_says_so_in_one_line(tmp_path):
    proc = start_service(tmp_path, {})
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 2
    assert output.strip().splitlines() == [
        "configuration: no model backend is configured: set " + MODEL_BACKEND_CHOICES
    ]


def test_a_backend_missing_a_variable_stops_the_service_in_one_line(tmp_path):
    proc = start_service(tmp_path, {"CLAUDE_CODE_USE_BEDROCK": "1"})
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 2
    assert output.strip().splitlines() == [
        "configuration: CLAUDE_CODE_USE_BEDROCK is set but AWS_REGION is not"
    ]
