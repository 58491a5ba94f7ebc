"""The whole service on real parts: gunicorn and an RQ worker started from the Procfile, a real
Redis, dockerd and the agent image running the real `claude` CLI. Only GitHub and the Anthropic
API are stand-ins, each a real HTTP server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import pytest
from docker.errors import NotFound

from jobs.common.settings import SECRET_OWNERS
from jobs.sandbox.container import LABEL
from jobs.sandbox.pool import POOL_LABEL, claimed_name
from tests.standins.anthropic import AnthropicStandIn
from tests.standins.github import GitHubStandIn
from tests.standins.github_objects import Comment, PullRequest
from tests.support import ROOT, delivery_headers, free_port, issue_comment_payload, wait_for

INSTALLATION = 4242
REPO = "octo-org/hello-world"
REVIEWED = "octo-org/reviewed"  # maps labels to review mode in its .github/claude.yml
BROKEN = "octo-org/broken"  # its .github/claude.yml is invalid
CONFIGURED = "octo-org/configured"  # setup commands and maintainers' instructions
FAILING_SETUP = "octo-org/failing-setup"
CUSTOM = "octo-org/custom"  # its trigger phrase changes during a test
SLOW = "octo-org/slow"  # a one-minute session timeout
REGISTRIES = "octo-org/registries"  # setup commands may reach package registries
FOLLOW_UPS = "octo-org/follow-ups"  # fork pull requests get follow-up pull requests
SECRET = "e2e-webhook-secret-0123456789"
MODEL_KEY = "sk-ant-api03-test-model-key-e2e-0123456789"
FINAL = re.compile(r"<!-- claudecluster:session (\S+) state=(done|failed) -->")
ANY_STATE = re.compile(r"<!-- claudecluster:session (\S+) state=\w+ -->")


# What an installation grants a session's token (app.yml's write permissions).
SESSION_PERMISSIONS = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
    "metadata": "read",
}


@pytest.fixture(scope="session")
def github(tmp_path_factory):
    with GitHubStandIn() as gh:
        gh.add_installation(
            INSTALLATION, "octo-org", permissions={**SESSION_PERMISSIONS, "administration": "write"}
        )
        gh.add_repo(
            REPO,
            INSTALLATION,
            files={
                "README.md": "# hello-world\n\nA tiny project.\n",
                "tests/test_math.py": "def test_add():\n    assert 1 + 1 == 2\n",
            },
        )
        gh.add_repo(
            REVIEWED,
            INSTALLATION,
            files={
                "README.md": "# reviewed\n",
                "greet.py": "def greet():\n    return 'hi'\n",
                ".github/claude.yml": "labels:\n  claude-review: review\n  claude: implement\n",
            },
        )
        gh.add_repo(
            BROKEN,
            INSTALLATION,
            files={
                "README.md": "# broken\n",
                ".github/claude.yml": "max_turns: 500\n",
            },
        )
        gh.add_repo(
            CONFIGURED,
            INSTALLATION,
            files={
                "README.md": "# configured\n",
                ".github/claude.yml": (
                    "setup:\n  - echo setup-was-here > /tmp/setup-marker\n"
                    "instructions: Always sign summaries with -- the bot.\n"
                    "branch_prefix: bots/claude/\ndraft_pull_requests: true\n"
                ),
            },
        )
        gh.add_repo(
            FAILING_SETUP,
            INSTALLATION,
            files={
                "README.md": "# failing\n",
                ".github/claude.yml": "setup:\n  - echo missing tool >&2; exit 7\n",
            },
        )
        gh.add_repo(
            FOLLOW_UPS,
            INSTALLATION,
            files={
                "README.md": "# follow-ups\n",
                "greet.py": "def greet():\n    return 'hi'\n",
                ".github/claude.yml": "fork_pull_requests: follow_up\n",
            },
        )
        gh.add_repo(
            SLOW,
            INSTALLATION,
            files={
                "README.md": "# slow\n",
                ".github/claude.yml": "timeout_minutes: 1\n",
            },
        )
        gh.add_repo(
            REGISTRIES,
            INSTALLATION,
            files={
                "README.md": "# registries\n",
                ".github/claude.yml": (
                    "network:\n  registries: true\nsetup:\n"
                    "  - npm view left-pad@1.3.0 version > /tmp/registry-ok\n"
                    "  - npm view --registry=https://example.com/ left-pad version"
                    " > /tmp/blocked 2>&1 || true\n"
                ),
            },
        )
        gh.add_user("octocat", 583231)
        for repo in (
            REPO,
            REVIEWED,
            BROKEN,
            CONFIGURED,
            FAILING_SETUP,
            SLOW,
            REGISTRIES,
            FOLLOW_UPS,
        ):
            gh.add_collaborator(repo, "octocat", "write")
        yield gh


@pytest.fixture(scope="session")
def anthropic():
    with AnthropicStandIn(expected_api_key=MODEL_KEY) as api:
        yield api


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@dataclass
class Service:
    url: str
    github: GitHubStandIn
    anthropic: AnthropicStandIn
    logs: dict[str, Path]
    redis_url: str
    issues: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # what the service's processes run with
    workspace_root: Path | None = None

    def new_issue(self, title: str, body: str = "Please help.") -> int:
        # Issues and pull requests share one sequence of numbers, as on GitHub.
        taken = [i.number for i in self.github.issues] + [p.number for p in self.github.pulls]
        number = max([99, *taken]) + 1
        self.github.add_issue(REPO, number, title, body, "octocat", 583231)
        self.issues.append(number)
        return number

    def deliver(
        self,
        payload: dict,
        delivery: str | None = None,
        event: str = "issue_comment",
        secret: str = SECRET,
    ) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = delivery_headers(event, body, secret, delivery)
        return httpx.post(f"{self.url}/webhooks", content=body, headers=headers, timeout=10)

    def comment(
        self,
        number: int,
        body: str,
        delivery: str | None = None,
        *,
        repo: str = REPO,
        pull: bool = False,
        login: str = "octocat",
    ) -> httpx.Response:
        """Post `body` as octocat on the stand-in, then deliver GitHub's webhook for it."""
        seeded = self.github.add_comment(repo, number, body, login)
        payload = issue_comment_payload(
            repo, number, body, INSTALLATION, login=login, user_id=seeded.user.id
        )
        payload["comment"]["id"] = seeded.id
        # The trigger's time is the seeded comment's, as GitHub's would be.
        stamp = seeded.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        payload["comment"]["created_at"] = payload["comment"]["updated_at"] = stamp
        if pull:
            payload["issue"]["pull_request"] = {"url": f"{self.github.api_url}/pulls/{number}"}
        return self.deliver(payload, delivery)

    def comments(self, number: int, repo: str = REPO) -> list[Comment]:
        return [c for c in self.github.comments if c.full_name == repo and c.issue_number == number]

    def tracking_comments(self, number: int, repo: str = REPO) -> list:
        """Ours, on the thread: conversation comments and replies in review threads."""
        threaded = [
            c
            for c in self.github.review_comments
            if c.pull.full_name == repo and c.pull.number == number
        ]
        return [c for c in [*self.comments(number, repo), *threaded] if ANY_STATE.search(c.body)]

    def pulls_for(self, number: int) -> list[PullRequest]:
        return [p for p in self.github.pulls if f"Closes #{number}" in (p.body or "")]

    def wait_final(self, number: int, timeout: float = 240, repo: str = REPO) -> Comment:
        def final():
            done = [c for c in self.tracking_comments(number, repo) if FINAL.search(c.body)]
            return done[0] if done else None

        try:
            return wait_for(final, timeout, what=f"a final tracking comment on #{number}")
        except AssertionError:
            raise AssertionError(
                f"no final comment; worker log tail:\n{self.tail('worker')}"
            ) from None

    def tail(self, name: str, lines: int = 60) -> str:
        return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs.values())


def leftover_containers(session_id: str | None = None) -> list:
    """The sessions' containers (or `session_id`'s): fresh ones by their label, warm ones a
    session claimed from a pool by their name (jobs/sandbox/pool.py renames them)."""
    label = f"{LABEL}={session_id}" if session_id else LABEL
    client = docker.from_env()
    summaries = client.api.containers(all=True, filters={"label": label})
    for summary in client.api.containers(all=True, filters={"label": POOL_LABEL}):
        names = [n.lstrip("/") for n in summary.get("Names") or []]
        wanted = claimed_name(session_id) if session_id else claimed_name("session-")
        if any(n == wanted or (not session_id and n.startswith(wanted)) for n in names):
            summaries.append(summary)
    found = []
    for summary in summaries:
        with contextlib.suppress(NotFound):  # removed between the listing and the inspection
            found.append(client.containers.get(summary["Id"]))
    return found


def service_env(
    github,
    anthropic,
    redis_url: str,
    image: str,
    workspaces: Path,
    port: int,
    inherit_sandbox: bool = True,
    **overrides: str,
) -> dict[str, str]:
    """What the Procfile's processes run with: the stand-ins' addresses and the test's keys.

    `inherit_sandbox=False` drops the caller's SANDBOX_* too, for tests that set them exactly.
    """
    dropped = ("GITHUB_", "ANTHROPIC_") + (() if inherit_sandbox else ("SANDBOX_",))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(dropped)},
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GITHUB_APP_ID": str(github.app_id),
        "GITHUB_PRIVATE_KEY": github.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": github.api_url,
        "REDIS_URL": redis_url,
        "ANTHROPIC_API_KEY": MODEL_KEY,
        "ANTHROPIC_BASE_URL": anthropic.url,
        "AGENT_IMAGE": image,
        "WORKSPACE_ROOT": str(workspaces),
        "SESSION_TIMEOUT": "240",
        "CLAUDE_MAX_TURNS": "10",
        "CLAUDE_MAX_RETRIES": "1",
        # Eight sessions of the one installation run at once in test_concurrency.py, past the
        # default limit of four; the limit itself is test_fairness.py's (it sets its own).
        "MAX_SESSIONS_PER_INSTALLATION": "8",
        **overrides,
    }


def more_workers(service: Service, count: int, logdir: Path) -> list[subprocess.Popen]:
    """`count` more worker processes for `service`, each started as the Procfile starts it (in a
    process group of its own, logging to `logdir`); `end_workers` stops them."""
    return [
        subprocess.Popen(
            ["bash", "-c", f"exec {procfile()['worker']}"],
            cwd=ROOT,
            env=role_env(service.env, "worker"),
            start_new_session=True,
            stdout=(logdir / f"worker{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(count)
    ]


def end_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


def role_env(env: dict[str, str], role: str) -> dict[str, str]:
    """What one Procfile process is given, as the shipped deployments do: its own secrets only
    (each would refuse to start holding another's)."""
    return {k: v for k, v in env.items() if SECRET_OWNERS.get(k, role) == role}


@dataclass(frozen=True)
class StandIns:
    """What every service a test starts shares: the GitHub and model API stand-ins, the Redis
    server (its databases apart) and the agent image."""

    github: GitHubStandIn
    anthropic: AnthropicStandIn
    redis_server: str
    agent_image: str


@pytest.fixture(scope="session")
def stand_ins(github, anthropic, redis_server, agent_image) -> StandIns:
    return StandIns(github, anthropic, redis_server, agent_image)


@contextlib.contextmanager
def run_service(
    name: str,
    db: int,
    stand_ins: StandIns,
    tmp_path_factory,
    inherit_sandbox: bool = True,
    **overrides: str,
):
    """Every line of the Procfile, on Redis database `db`, until the block ends."""
    github, anthropic = stand_ins.github, stand_ins.anthropic
    port = free_port()
    logdir = tmp_path_factory.mktemp(f"{name}-logs")
    workspaces = tmp_path_factory.mktemp(f"{name}-workspaces")
    redis_url = stand_ins.redis_server.removesuffix("/0") + f"/{db}"
    env = service_env(
        github,
        anthropic,
        redis_url,
        stand_ins.agent_image,
        workspaces,
        port,
        inherit_sandbox,
        **overrides,
    )
    procs, logs = {}, {}
    for role, command in procfile().items():
        logs[role] = logdir / f"{role}.log"
        procs[role] = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=role_env(env, role),
            start_new_session=True,
            stdout=logs[role].open("wb"),
            stderr=subprocess.STDOUT,
        )
    svc = Service(
        f"http://127.0.0.1:{port}",
        github,
        anthropic,
        logs,
        redis_url,
        env=env,
        workspace_root=workspaces,
    )

    def healthy():
        for role, proc in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{role} exited early:\n{svc.tail(role)}")
        try:
            return httpx.get(f"{svc.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 30, what=f"the {name} web process")
        wait_for(
            lambda: "Listening on" in logs["worker"].read_text(), 30, what=f"the {name} worker"
        )
        yield svc
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, 15)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def service(stand_ins, tmp_path_factory):
    # Database 1: unit tests flush database 0 between tests.
    with run_service("service", 1, stand_ins, tmp_path_factory) as svc:
        yield svc


@pytest.fixture(autouse=True)
def fresh_model(anthropic):
    """Each test scripts the model anew and reads only the requests its own session made."""
    anthropic.reset()
    yield
