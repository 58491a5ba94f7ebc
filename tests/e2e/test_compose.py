"""deploy/compose.yaml as shipped, run by `docker-compose` on this machine's engine.

The service image is built by scripts/build-images.sh (on its Debian stand-in bases when no
registry answers); the compose file is copied unchanged next to per-role env files written for
the stand-ins. GitHub and the model API are stand-ins on the host, listening on the Docker
bridge's address, which containers on any compose network reach through their gateway. The
worker container drives the host's engine through the socket; the workspaces are the same path on
the host and in the containers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from jobs.upkeep.interrupted import WORKER_STOPPED, headline
from tests.e2e.conftest import (
    FINAL,
    INSTALLATION,
    REPO,
    SECRET,
    Service,
    leftover_containers,
)
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.standins.github import GitHubStandIn
from tests.support import ROOT, free_port, session_containers, wait_for

pytestmark = pytest.mark.timeout(2400)

COMPOSE = ROOT / "deploy" / "compose.yaml"
INTERRUPTED = headline(WORKER_STOPPED)
CONTRIBUTING = "# Contributing\n\nRun `pytest -q`.\n"


def bridge_address() -> str:
    """The default bridge's gateway: an address of this host every container can reach."""
    bridge = docker.from_env().networks.get("bridge")
    config = bridge.attrs["IPAM"]["Config"][0]
    # Some engines leave the default bridge's gateway unsaid: it is then the subnet's first host.
    return config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])


def env_file(path: Path, values: dict[str, str]) -> None:
    # One line per variable: a PEM's newlines written as \n, as worker.env.example allows.
    path.write_text(
        "".join(f"{k}={v.replace(chr(10), chr(92) + 'n')}\n" for k, v in values.items())
    )
    path.chmod(0o600)


@dataclass
class Deployment:
    project: str
    directory: Path
    env: dict[str, str]
    service: Service
    log: Path

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = ["docker-compose", "-p", self.project, "-f", str(self.directory / "compose.yaml")]
        done = subprocess.run(
            [*command, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}")
        return done.stdout

    def logs(self) -> str:
        text = self.compose("logs", "--no-color", "--tail", "200", check=False)
        self.log.write_text(text)
        return text

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.service.url}/readyz", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_listening(self) -> bool:
        return "Listening on" in self.compose("logs", "--no-color", "worker", check=False)


def seeded_github(host: str) -> GitHubStandIn:
    gh = GitHubStandIn().start(host=host)
    permissions = {
        "checks": "write",
        "contents": "write",
        "issues": "write",
        "pull_requests": "write",
        "metadata": "read",
    }
    gh.add_installation(INSTALLATION, "octo-org", permissions=permissions)
    gh.add_repo(REPO, INSTALLATION, files={"README.md": "# hello-world\n"})
    gh.add_user("octocat", 583231)  # the id Service.new_issue and comment use
    gh.add_collaborator(REPO, "octocat", "write")
    return gh


def build_images(tag: str) -> str:
    """The service image as a user builds it; the Redis image compose should run."""
    done = subprocess.run(
        ["bash", "scripts/build-images.sh", "--service"],
        cwd=ROOT,
        env={**os.environ, "SERVICE_IMAGE": tag},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    named = re.search(r"export REDIS_IMAGE=(\S+)", done.stderr)
    return named.group(1) if named else "redis:7"


def write_env_files(directory: Path, gh: GitHubStandIn, api: AnthropicStandIn, key: str) -> None:
    env = directory / "env"
    env.mkdir()
    env_file(
        env / "web.env",
        {
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_CLIENT_ID": gh.app_client_id,
            "GITHUB_CLIENT_SECRET": secrets.token_hex(20),
            "GITHUB_API_URL": gh.api_url,
            "GITHUB_URL": gh.url,
        },
    )
    env_file(
        env / "worker.env",
        {
            "GITHUB_APP_ID": str(gh.app_id),
            "GITHUB_PRIVATE_KEY": gh.private_key_pem,
            "GITHUB_API_URL": gh.api_url,
            "GITHUB_URL": gh.url,
            "AGENT_IMAGE": "claudecluster/agent:latest",
            "SESSION_TIMEOUT": "300",
            "CLAUDE_MAX_TURNS": "10",
            "CLAUDE_MAX_RETRIES": "1",
            "REAPER_INTERVAL": "15",
        },
    )
    env_file(env / "gateway.env", {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": api.url})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    assert shutil.which("docker-compose"), "apt-get install docker-compose"
    suffix = secrets.token_hex(4)
    project = f"ccompose-{suffix}"
    tag = f"claudecluster/service:{project}"
    redis_image = build_images(tag)
    host = bridge_address()
    key = f"compose-model-key-{secrets.token_hex(16)}"
    gh = seeded_github(host)
    api = AnthropicStandIn(host=host, expected_api_key=key).start()
    # Not under pytest's 0700 temp dirs: uid 10001 (the service) and 1000 (the sandbox) must
    # reach the workspaces, at the same path on the host and in the containers.
    workspaces = Path(f"/var/tmp/{project}/workspaces")
    workspaces.mkdir(parents=True)
    os.chmod(workspaces.parent, 0o755)
    os.chown(workspaces, 10001, 10001)
    directory = tmp_path_factory.mktemp(project)
    shutil.copy(COMPOSE, directory / "compose.yaml")
    write_env_files(directory, gh, api, key)
    port = free_port()
    env = {
        **os.environ,
        "SERVICE_IMAGE": tag,
        "REDIS_IMAGE": redis_image,
        "WORKSPACE_ROOT": str(workspaces),
        "WEB_PORT": str(port),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    log = directory / "compose.log"
    service = Service(
        f"http://127.0.0.1:{port}", gh, api, {"worker": log}, "", workspace_root=workspaces
    )
    d = Deployment(project, directory, env, service, log)
    try:
        d.compose("up", "-d", timeout=900)
        wait_for(d.healthy, 300, interval=2, what="the web's /readyz on the published port")
        wait_for(d.worker_listening, 300, interval=2, what="the worker container")
        yield d
    finally:
        d.logs()
        d.compose("down", "--volumes", "--timeout", "90", timeout=600, check=False)
        api.stop()
        gh.stop()
        shutil.rmtree(workspaces.parent, ignore_errors=True)
        subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


def ask(d: Deployment, number: int, text: str) -> str:
    resp = d.service.comment(number, text)
    assert resp.status_code == 202, resp.text
    return resp.json()["session"]


def wait_final(d: Deployment, number: int, timeout: float):
    try:
        return d.service.wait_final(number, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"no final comment; compose logs:\n{d.logs()[-6000:]}") from None


def test_a_signed_comment_on_the_published_port_opens_a_pull_request(deployment):
    d = deployment
    d.service.anthropic.reset()
    d.service.anthropic.script(
        [
            ToolUse("Write", {"file_path": "/workspace/CONTRIBUTING.md", "content": CONTRIBUTING}),
            Text("Added CONTRIBUTING.md."),
        ]
    )
    number = d.service.new_issue("Document the tests")
    session_id = ask(d, number, "/claude add a CONTRIBUTING.md")

    final = wait_final(d, number, timeout=600)
    assert f"{session_id} state=done" in final.body, final.body
    (pull,) = d.service.pulls_for(number)
    assert d.service.github.read_file(REPO, pull.head_ref, "CONTRIBUTING.md") == CONTRIBUTING
    assert f"Claude opened #{pull.number}" in final.body
    # The sandbox ran on the host's engine, and is gone with its session.
    wait_for(lambda: not leftover_containers(session_id), 120, what="the session's container")


def test_redis_keeps_its_data_across_a_restart(deployment):
    d = deployment
    probe = f"ccompose-probe-{secrets.token_hex(4)}"
    assert d.compose("exec", "-T", "redis", "redis-cli", "CONFIG", "GET", "appendonly").split()[
        -1
    ] == ("yes")
    d.compose("exec", "-T", "redis", "redis-cli", "SET", probe, "kept")
    d.compose("restart", "redis")

    def read() -> str | None:
        done = d.compose("exec", "-T", "redis", "redis-cli", "GET", probe, check=False)
        return done.strip() or None

    assert wait_for(read, 120, interval=2, what="Redis back after its restart") == "kept"
    wait_for(d.healthy, 120, interval=2, what="the web ready again")


def test_restarting_the_worker_mid_session_interrupts_it_and_reaps_its_container(deployment):
    d = deployment
    d.service.anthropic.reset()
    d.service.anthropic.script([Text("too late", delay=120)])
    number = d.service.new_issue("Restarted under a session")
    session_id = ask(d, number, "/claude look into this")

    def running() -> bool:
        up = session_containers(docker.from_env(), session_id)
        return bool(up) and bool(d.service.anthropic.main_requests())

    wait_for(running, 300, interval=1, what=f"{session_id} to be mid-turn")
    # A restart in two steps, to read how the worker ended: by itself (0), its clean-up done,
    # rather than SIGKILLed (137) at the end of the grace period.
    d.compose("stop", "worker", timeout=300)
    (worker,) = docker.from_env().containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={d.project}",
                "com.docker.compose.service=worker",
            ]
        },
    )
    assert worker.attrs["State"]["ExitCode"] == 0, d.logs()[-4000:]
    d.compose("start", "worker", timeout=300)

    final = wait_final(d, number, timeout=300)
    assert INTERRUPTED in final.body and f"{session_id} state=failed" in final.body, final.body
    wait_for(lambda: not leftover_containers(session_id), 120, what="the session's container gone")
    assert not d.service.pulls_for(number)
    wait_for(d.worker_listening, 300, interval=2, what="the worker back")


def test_down_leaves_no_session_container_behind(deployment):
    d = deployment
    d.service.anthropic.reset()
    d.service.anthropic.script([Text("too late", delay=300)])
    number = d.service.new_issue("Shut down under a session")
    session_id = ask(d, number, "/claude look into this")
    wait_for(
        lambda: leftover_containers(session_id) and d.service.anthropic.main_requests(),
        300,
        interval=1,
        what=f"{session_id} to be mid-turn",
    )
    d.compose("down", "--timeout", "90", timeout=600)
    assert not leftover_containers(session_id)
    project = docker.from_env().containers.list(
        all=True, filters={"label": f"com.docker.compose.project={d.project}"}
    )
    assert not project
    (final,) = d.service.tracking_comments(number)
    assert FINAL.search(final.body) and INTERRUPTED in final.body, final.body
