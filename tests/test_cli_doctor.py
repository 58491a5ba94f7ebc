"""`claudecluster doctor` on real parts: dockerd and the agent image, a Redis of the tests' own,
the GitHub and Anthropic stand-ins (real HTTP servers checking the App's JWT and the API key),
and the real web app behind TLS standing for the public address. Each check passes there, and
each fails, with its fix, when its part is broken; no secret ever appears in the output."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import secrets
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from app import create_service
from jobs.common.settings import WebSettings
from tests.cli_support import cli_env, run_cli, write_env_files
from tests.standins.anthropic import AnthropicStandIn
from tests.standins.github import GitHubStandIn
from tests.support import ROOT, free_port, serving

INSTALLATION = 7070
LINE = re.compile(r"^(?P<mark>ok|FAIL|skip|warn) +(?P<name>\S+(?: \S+)*?) {2,}(?P<text>.*)$")
WEBHOOK_SECRET = secrets.token_hex(24)
MODEL_KEY = "test-model-key-" + secrets.token_hex(16)


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made here: the public address's TLS, trusted by the test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, "octo-org")
        yield gh


@pytest.fixture(scope="module")
def anthropic():
    with AnthropicStandIn(expected_api_key=MODEL_KEY) as api:
        yield api


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def public_web(redis_server, tls):
    """The real web app served over https; yields its URL and the CA file that trusts it."""
    settings = WebSettings.parse(GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET, REDIS_URL=redis_server)
    with serving(create_service(settings), tls) as url:
        yield url, tls[0]


async def another_service(scope, receive, send) -> None:
    """Some other server behind the address: it answers /healthz, but not as ours does."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"OK"})


@pytest.fixture
def healthy(tmp_path, github, anthropic, redis_server, public_web):
    """Everything right: the role files hold their secrets, the environment the rest."""
    url, ca = public_web
    write_env_files(
        tmp_path / "env",
        web={"GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET},
        worker={"GITHUB_APP_ID": str(github.app_id), "GITHUB_PRIVATE_KEY": github_key(github)},
        gateway={"ANTHROPIC_API_KEY": MODEL_KEY},
    )
    return cli_env(
        tmp_path,
        REDIS_URL=redis_server,
        GITHUB_API_URL=github.api_url,
        ANTHROPIC_BASE_URL=anthropic.url,
        PUBLIC_URL=url,
        SSL_CERT_FILE=str(ca),
    )


def github_key(github: GitHubStandIn) -> str:
    return github.private_key_pem.replace("\n", "\\n")  # as a secret store flattens it


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, str], str]:
    """Exit status, each check's line by its name, and the whole output."""
    done = run_cli(env, "doctor", *args)
    output = done.stdout + done.stderr
    lines = {}
    for line in done.stdout.splitlines():
        found = LINE.match(line)
        if found:
            lines[found["name"]] = f"{found['mark']} {found['text']}"
    return done.returncode, lines, output


def no_secret_in(output: str, *values: str) -> None:
    for value in values:
        for piece in value.replace("\\n", "\n").splitlines():
            if len(piece) > 8 and "-----" not in piece:
                assert piece not in output, "a secret was printed"


def test_every_check_passes_on_real_parts(healthy, github):
    code, lines, output = doctor(healthy)
    assert code == 0, output
    assert all(line.startswith("ok ") for line in lines.values()), output
    assert "Docker" in lines["docker engine"]
    assert "runc is registered" in lines["sandbox runtime"]
    assert "claudecluster/agent:latest, Claude Code 2." in lines["agent image"]
    assert "answers" in lines["redis"]
    assert f"{github.app_slug} (id {github.app_id})" in lines["GitHub App"]
    assert "1 (octo-org)" in lines["installations"]
    assert "webhook secret" in lines and "model backend" in lines
    assert "reaches this service" in lines["public URL"]
    assert "only its own" in lines["worker secrets"]
    assert output.rstrip().endswith("all checks passed")
    no_secret_in(output, WEBHOOK_SECRET, MODEL_KEY, github.private_key_pem)


def test_json_lists_every_check(healthy):
    done = run_cli(healthy, "doctor", "--json")
    rows = json.loads(done.stdout)
    assert done.returncode == 0
    assert {row["name"] for row in rows} >= {"docker engine", "GitHub App", "public URL"}
    assert all(row["ok"] is True for row in rows)


def test_nothing_configured_names_each_fix(tmp_path):
    """The env files as their examples ship (every value empty), and no part reachable."""
    (tmp_path / "env").mkdir()
    for role in ("web", "worker", "gateway"):
        example = ROOT / "deploy" / "env" / f"{role}.env.example"
        (tmp_path / "env" / f"{role}.env").write_text(example.read_text())
    redis_password = secrets.token_hex(12)
    env = cli_env(
        tmp_path,
        REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{free_port()}/0",
        AGENT_IMAGE="claudecluster/no-such-image:doctor-test",
        SANDBOX_RUNTIME="no-such-runtime",
    )
    code, lines, output = doctor(env)
    assert code == 1, output
    assert lines["docker engine"].startswith("ok ")
    runtime = lines["sandbox runtime"]
    assert runtime.startswith("FAIL") and "no-such-runtime is not registered" in runtime
    assert "daemon.json" in runtime
    image = lines["agent image"]
    assert image.startswith("FAIL") and "no-such-image:doctor-test is missing" in image
    assert "scripts/build-images.sh" in image
    assert lines["redis"].startswith("FAIL") and "does not answer" in lines["redis"]
    assert "redis://:***@127.0.0.1:" in lines["redis"] and redis_password not in output
    assert lines["GitHub App"].startswith("FAIL") and "GITHUB_APP_ID is not set" in output
    assert lines["installations"].startswith("skip")
    assert lines["webhook secret"].startswith("FAIL") and "openssl rand" in output
    model = lines["model backend"]
    assert model.startswith("FAIL") and "ANTHROPIC_API_KEY" in model
    public = lines["public URL"]
    assert public.startswith("FAIL")
    assert "GitHub must reach the webhook: set PUBLIC_URL to a tunnel or public address" in public
    assert "checks failed" in output


def test_docker_down_gives_the_fix(healthy, tmp_path):
    healthy["DOCKER_HOST"] = f"unix://{tmp_path}/dead.sock"
    code, lines, output = doctor(healthy)
    assert code == 1
    engine = lines["docker engine"]
    assert engine.startswith("FAIL") and f"{tmp_path}/dead.sock" in engine
    assert "dockerd" in engine
    assert lines["agent image"].startswith("skip")
    assert lines["GitHub App"].startswith("ok ")  # the rest is still checked


def test_bad_credentials_are_refused_without_being_printed(healthy, tmp_path, github):
    weak = "changeme"
    wrong_model_key = "test-model-key-" + secrets.token_hex(16)
    write_env_files(
        tmp_path / "env",
        web={"GITHUB_WEBHOOK_SECRET": weak},
        worker={"GITHUB_APP_ID": str(github.app_id), "GITHUB_PRIVATE_KEY": "not-a-pem-key-at-all"},
        gateway={"ANTHROPIC_API_KEY": wrong_model_key},
    )
    healthy["PUBLIC_URL"] = "http://127.0.0.1:9"
    code, lines, output = doctor(healthy)
    assert code == 1
    app = lines["GitHub App"]
    assert app.startswith("FAIL") and "not a PEM private key" in app
    secret = lines["webhook secret"]
    assert secret.startswith("FAIL") and "weak" in secret
    model = lines["model backend"]
    assert model.startswith("FAIL") and "401" in model
    assert lines["public URL"].startswith("FAIL") and "is not https" in lines["public URL"]
    no_secret_in(output, wrong_model_key, "not-a-pem-key-at-all")
    assert f"={weak}" not in output and f" {weak} " not in output


def test_a_key_github_does_not_know_and_an_unreachable_public_url(healthy, tmp_path, github):
    other_key = rsa_pem()
    write_env_files(
        tmp_path / "env",
        worker={
            "GITHUB_APP_ID": str(github.app_id),
            "GITHUB_PRIVATE_KEY_PATH": str(tmp_path / "k"),
        },
    )
    (tmp_path / "k").write_text(other_key)
    healthy["PUBLIC_URL"] = f"https://127.0.0.1:{free_port()}"
    code, lines, output = doctor(healthy)
    assert code == 1
    app = lines["GitHub App"]
    assert app.startswith("FAIL") and "refused the App's JWT (401" in app
    assert lines["installations"].startswith("skip")
    public = lines["public URL"]
    assert public.startswith("FAIL") and "does not answer" in public
    no_secret_in(output, other_key)


def test_an_app_nobody_installed(healthy, tmp_path):
    with GitHubStandIn() as lonely:
        write_env_files(
            tmp_path / "env",
            worker={"GITHUB_APP_ID": str(lonely.app_id), "GITHUB_PRIVATE_KEY": github_key(lonely)},
        )
        healthy["GITHUB_API_URL"] = lonely.api_url
        code, lines, output = doctor(healthy)
        html_url = f"{lonely.url}/github-apps/{lonely.app_slug}"
    assert code == 1
    assert lines["GitHub App"].startswith("ok ")
    installs = lines["installations"]
    assert installs.startswith("FAIL")
    assert f"install the App: {html_url}/installations/new" in installs


def test_a_secret_in_another_roles_file_fails(healthy, tmp_path, github):
    write_env_files(
        tmp_path / "env",
        worker={
            "GITHUB_APP_ID": str(github.app_id),
            "GITHUB_PRIVATE_KEY": github_key(github),
            "ANTHROPIC_API_KEY": MODEL_KEY,
        },
    )
    code, lines, output = doctor(healthy)
    assert code == 1
    line = lines["worker secrets"]
    assert line.startswith("FAIL") and "ANTHROPIC_API_KEY" in line and "gateway.env" in line
    assert lines["gateway secrets"].startswith("ok ")
    no_secret_in(output, MODEL_KEY)


def test_a_public_url_reaching_another_service(healthy, tls):
    with serving(another_service, tls) as url:
        healthy["PUBLIC_URL"] = url
        code, lines, _ = doctor(healthy)
    assert code == 1
    public = lines["public URL"]
    assert public.startswith("FAIL") and "not as this service does" in public


def test_several_model_backends_warn_which_one_is_used(healthy, tmp_path):
    token = "test-oauth-token-" + secrets.token_hex(16)
    write_env_files(
        tmp_path / "env", gateway={"ANTHROPIC_API_KEY": MODEL_KEY, "CLAUDE_CODE_OAUTH_TOKEN": token}
    )
    code, lines, output = doctor(healthy)
    assert code == 0, output  # a warning, not a failure
    model = lines["model backend"]
    assert model.startswith("warn anthropic-api-key:")
    assert "several are configured (anthropic-api-key, claude-subscription)" in model
    no_secret_in(output, MODEL_KEY, token)


def test_a_github_that_does_not_answer_is_not_called_a_refusal(healthy):
    healthy["GITHUB_API_URL"] = f"http://127.0.0.1:{free_port()}/api/v3"
    code, lines, _ = doctor(healthy)
    assert code == 1
    app = lines["GitHub App"]
    assert app.startswith("FAIL") and "does not answer" in app and "refused" not in app
    assert "GITHUB_API_URL" in app
