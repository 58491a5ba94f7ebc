"""Start-up with missing or malformed configuration: one line naming the variable, no start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs.common.settings import (
    MODEL_BACKEND_CHOICES,
    ConfigError,
    GatewaySettings,
    WebSettings,
    WorkerSettings,
)
from tests.support import ROOT, free_port


def clean_env(**values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("GITHUB_", "ANTHROPIC_", "REDIS_", "AGENT_", "AWS_", "CLAUDE_CODE_", "GOOGLE_")
        )
    }
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    env.update(values)
    return env


def run(cmd: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("configuration:")]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "GITHUB_APP_ID is not set"),
        ({"GITHUB_APP_ID": "twelve"}, "GITHUB_APP_ID: Input should be a valid integer"),
        (
            {"GITHUB_APP_ID": "12", "GITHUB_PRIVATE_KEY": "not a key"},
            "GITHUB_PRIVATE_KEY: not a PEM private key",
        ),
        (
            {"GITHUB_APP_ID": "12", "GITHUB_PRIVATE_KEY_PATH": "/nonexistent/key.pem"},
            "GITHUB_PRIVATE_KEY_PATH: cannot read the key file",
        ),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL: Value error, must be a redis://"),
        ({"GITHUB_API_URL": "api.github.com"}, "GITHUB_API_URL: Value error, must be an http"),
    ],
)
def test_worker_refuses_to_start_naming_the_variable(tmp_path, values, expected):
    result = run([sys.executable, "-m", "jobs.worker"], clean_env(**values), tmp_path)
    assert result.returncode == 2
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_web_refuses_to_start_without_a_webhook_secret(tmp_path):
    env = clean_env(PYTHONPATH=str(ROOT))
    cmd = [
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{free_port()}",
        "app:create_service()",
    ]
    result = run(cmd, env, tmp_path)
    assert result.returncode != 0
    assert problem_lines(result.stderr) == ["configuration: GITHUB_WEBHOOK_SECRET is not set"]


def test_the_shared_dotenv_and_the_roles_own_env_file_are_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_WEBHOOK_SECRET", "REDIS_URL", "PORT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("REDIS_URL=redis://r:1/2\nPORT=9000\n")
    (tmp_path / "deploy" / "env").mkdir(parents=True)
    (tmp_path / "deploy" / "env" / "web.env").write_text(
        "GITHUB_WEBHOOK_SECRET=from-the-web-env-file\nPORT=9001\n"
    )
    settings = WebSettings.load()
    assert settings.github_webhook_secret.get_secret_value() == "from-the-web-env-file"
    assert "from-the-web-env-file" not in repr(settings)  # a SecretStr prints as stars
    assert settings.redis_url == "redis://r:1/2" and settings.port == 9001  # the role's file wins
    assert WorkerSettings.parse().redis_url == "redis://r:1/2"


def test_no_role_has_a_field_for_another_roles_secret():
    def names(cls) -> set[str]:
        return {info.alias for info in cls.model_fields.values()}

    assert not {"ANTHROPIC_API_KEY", "GITHUB_WEBHOOK_SECRET"} & names(WorkerSettings)
    assert not {"GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "ANTHROPIC_API_KEY"} & names(
        WebSettings
    )
    assert not {"GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "GITHUB_WEBHOOK_SECRET"} & names(
        GatewaySettings
    )
    held = WorkerSettings.parse(ANTHROPIC_API_KEY="a-model-key-not-for-the-worker")
    assert "a-model-key-not-for-the-worker" not in repr(held.model_dump())


@pytest.mark.parametrize(
    ("role", "command", "secret", "where"),
    [
        ("worker", ["-m", "jobs.worker"], "ANTHROPIC_API_KEY", "environment"),
        ("worker", ["-m", "jobs.worker"], "GITHUB_WEBHOOK_SECRET", ".env"),
        ("gateway", ["-m", "jobs.gateway.service"], "GITHUB_PRIVATE_KEY", "deploy/env/gateway.env"),
        ("web", ["-m", "app", "check", "web"], "GITHUB_PRIVATE_KEY_PATH", ".env"),
        ("web", ["-m", "app", "check", "web"], "ANTHROPIC_API_KEY", "environment"),
    ],
)
def test_a_role_given_another_roles_secret_refuses_to_start(tmp_path, role, command, secret, where):
    own = {
        "web": {"GITHUB_WEBHOOK_SECRET": "a-webhook-secret-for-the-test"},
        "worker": {"GITHUB_APP_ID": "12", "GITHUB_PRIVATE_KEY_PATH": "/nonexistent"},
        "gateway": {"ANTHROPIC_API_KEY": "a-gateway-model-key-for-the-test"},
    }[role]
    value = "a-value-that-must-stay-where-it-belongs"
    values = {**own, "PYTHONPATH": str(ROOT)}
    if where == "environment":
        values[secret] = value
    else:
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text(f"{secret}={value}\n")
    result = run([sys.executable, *command], clean_env(**values), tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        f"{secret} is set in" in result.stderr and f"of the {role}, but only the" in result.stderr
    )
    assert value not in result.stderr + result.stdout


def test_private_key_with_escaped_newlines_is_accepted(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    flat = pem.strip().replace("\n", "\\n")
    settings = WorkerSettings.parse(GITHUB_PRIVATE_KEY=flat)
    assert settings.private_key.strip() == pem.strip()
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem)
    from_file = WorkerSettings.parse(GITHUB_PRIVATE_KEY_PATH=str(key_file))
    assert from_file.private_key == pem and pem in from_file.secrets()  # the redactor learns it


def test_worker_shutdown_is_warm_or_cold():
    assert WorkerSettings.parse().worker_shutdown == "warm"
    assert WorkerSettings.parse(WORKER_SHUTDOWN="cold").worker_shutdown == "cold"
    with pytest.raises(ConfigError) as error:
        WorkerSettings.parse(WORKER_SHUTDOWN="lukewarm")
    assert str(error.value) == "WORKER_SHUTDOWN: Input should be 'warm' or 'cold'"


def test_every_problem_is_named_at_once():
    with pytest.raises(ConfigError) as error:
        WorkerSettings.parse(GITHUB_PRIVATE_KEY="").require(("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY"))
    assert str(error.value) == (
        "GITHUB_APP_ID is not set; GITHUB_PRIVATE_KEY (or GITHUB_PRIVATE_KEY_PATH) is not set"
    )


def test_run_script_check_names_everything_missing(tmp_path):
    result = run(
        [sys.executable, "-m", "app", "check", "all"], clean_env(PYTHONPATH=str(ROOT)), tmp_path
    )
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("configuration")] == [
        "configuration of the web: GITHUB_WEBHOOK_SECRET is not set",
        "configuration of the worker: GITHUB_APP_ID is not set; "
        "GITHUB_PRIVATE_KEY (or GITHUB_PRIVATE_KEY_PATH) is not set",
        "configuration of the gateway: no model backend is configured: set "
        + MODEL_BACKEND_CHOICES,
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"WORKER_HOST_ID": "host b/../1"},
            "WORKER_HOST_ID: Value error, must be 1 to 128 letters, digits",
        ),
        ({"WORKER_HOST_ID": "-leading-dash"}, "WORKER_HOST_ID: Value error, must be 1 to 128"),
        (
            {"JOB_MONITORING_INTERVAL": "0"},
            "JOB_MONITORING_INTERVAL: Input should be greater than or equal to 1",
        ),
    ],
)
def test_worker_host_settings_refuse_bad_values_by_name(values, expected):
    with pytest.raises(ConfigError) as error:
        WorkerSettings.parse(**values)
    assert expected in str(error.value)


def test_a_worker_host_id_names_the_host_as_given():
    settings = WorkerSettings.parse(WORKER_HOST_ID="build-3.eu:1", JOB_MONITORING_INTERVAL="5")
    assert (settings.worker_host_id, settings.job_monitoring_interval) == ("build-3.eu:1", 5)
