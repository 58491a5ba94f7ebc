"""`claudecluster run`: the command as a user runs it, on a real git checkout, with dockerd, the
agent image and the real `claude` CLI in it; only the model is the Anthropic stand-in, behind
the real gateway (embedded in the command, or a gateway service already listening).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import docker
import pytest

from jobs.common.settings import GatewaySettings
from jobs.gateway.service import embedded
from jobs.sandbox.container import LABEL
from tests.standins.anthropic import AnthropicStandIn, Fail, Text, ToolUse
from tests.support import ROOT, session_containers, wait_for

IMAGE = os.environ.get("AGENT_IMAGE", "claudecluster/agent:latest")
CLI = "import sys; from jobs.cli import main; sys.exit(main())"
TASK = "add a greeting"
README = "# local project\n"
# What the person's environment may hold that the run must not see: it reads its own.
DROPPED = ("GITHUB_", "ANTHROPIC_", "CLAUDE_", "SANDBOX_", "REDIS_", "GATEWAY_", "AGENT_IMAGE")


def model_key() -> str:
    # Made at run time, in the shape of a real key, so that redaction is tested on that shape.
    return "-".join(["sk", "ant", "api03", secrets.token_urlsafe(32)])


@pytest.fixture
def key() -> str:
    return model_key()


@pytest.fixture
def api(key):
    with AnthropicStandIn(expected_api_key=key) as standin:
        yield standin


@pytest.fixture
def workspaces():
    # Short: the gateway's socket path inside it must stay under the 108-byte limit.
    root = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch", "main")
    git(path, "config", "user.name", "Tess Tester")
    git(path, "config", "user.email", "tess@example.com")
    (path / "README.md").write_text(README)
    git(path, "add", "README.md")
    git(path, "commit", "--quiet", "-m", "Start")
    return path


def cli_env(tmp_path: Path, workspaces: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    (tmp_path / "env").mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        CLAUDECLUSTER_ENV_DIR=str(tmp_path / "env"),
        WORKSPACE_ROOT=str(workspaces),
        AGENT_IMAGE=IMAGE,
        SESSION_TIMEOUT="240",
        CLAUDE_MAX_RETRIES="0",
        COLUMNS="200",
    )
    env.update(values)
    return env


def cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # From a directory of its own, so that no .env or deploy/env of this checkout is read.
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def snapshot(repo: Path) -> dict[str, str]:
    """What the person has in their checkout: branch, HEAD, index, work tree, other refs."""
    return {
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "head": git(repo, "rev-parse", "HEAD"),
        "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "readme": (repo / "README.md").read_text(),
    }


def test_run_commits_claudes_change_on_a_new_branch_and_leaves_the_checkout_alone(
    tmp_path, repo, api, key, workspaces, agent_image
):
    # Work in progress that must stay where it is, and out of the session.
    (repo / "README.md").write_text(README + "unsaved thoughts\n")
    (repo / "draft.txt").write_text("not committed\n")
    # The name the run would pick is taken: it must not be moved.
    git(repo, "branch", "claude/local-add-a-greeting")
    taken = git(repo, "rev-parse", "claude/local-add-a-greeting")
    before = snapshot(repo)
    # The sandbox plants git state for the host to run when it commits: a hook, an fsmonitor
    # and a clean filter, each of which would create `marker` on the host.
    marker = tmp_path / "planted-git-state-ran"
    plant = (
        "mkdir -p .git/hooks && "
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > .git/hooks/pre-commit && "
        "chmod +x .git/hooks/pre-commit && "
        f"printf '[core]\\n\\thooksPath = .git/hooks\\n\\tfsmonitor = touch {marker}\\n"
        f'[filter "evil"]\\n\\tclean = touch {marker}\\n\' > .git/config && '
        "echo '* filter=evil' > .gitattributes"
    )
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greeting.txt", "content": "hello\n"}),
            ToolUse("Bash", {"command": "env | sort > /workspace/seen-env.txt"}),
            ToolUse("Bash", {"command": plant}),
            Text("Added greeting.txt, which says hello."),
        ]
    )
    env = cli_env(tmp_path, workspaces, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=api.url)
    done = cli(tmp_path, env, "run", "--repo", str(repo), TASK)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    branch = "claude/local-add-a-greeting-2"
    # The checkout: the same branch, HEAD, index and work tree; the taken name not moved.
    assert snapshot(repo) == before
    assert git(repo, "rev-parse", "claude/local-add-a-greeting") == taken
    # The new branch: one commit on the checkout's HEAD, with Claude's files only.
    assert git(repo, "rev-parse", f"{branch}~1") == before["head"]
    changed = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", branch).split()
    assert sorted(changed) == [".gitattributes", "greeting.txt", "seen-env.txt"]
    assert not marker.exists()  # nothing planted ran, and no `.git` entry was committed
    assert git(repo, "show", f"{branch}:greeting.txt") == "hello\n"
    assert git(repo, "show", f"{branch}:README.md") == README  # the uncommitted edit left out
    author = git(repo, "log", "-1", "--format=%an <%ae>|%cn", branch)
    assert author == "Claude <noreply@anthropic.com>|Claude\n"
    message = git(repo, "log", "-1", "--format=%B", branch)
    assert message.startswith("Add a greeting\n\nAdded greeting.txt, which says hello.\n")
    assert "Co-authored-by: Tess Tester <tess@example.com>" in message
    # The sandbox had the session's key, never the model key; the stand-in got the real one.
    seen = git(repo, "show", f"{branch}:seen-env.txt")
    assert "ANTHROPIC_API_KEY=ccgw-" in seen and key not in seen
    assert api.main_requests() and all(r.api_key == key for r in api.main_requests())
    assert key not in out + done.stderr
    # Progress as it happened, then the summary.
    for step in ("Preparing the workspace", "Running Claude", "Committing to a new branch"):
        assert f"✓ {step}" in out, out
    assert "Write greeting.txt" in out and "Bash: env | sort" in out
    assert "uncommitted change(s) in your checkout are not included" in out
    assert f"Branch: {branch} (from main)" in out
    assert "A  greeting.txt" in out and "A  seen-env.txt" in out
    assert "Claude's summary:\nAdded greeting.txt, which says hello." in out
    assert " turns · $" in out and "⏱ " in out
    # Nothing left behind: no container, no workspace, no embedded gateway's socket.
    session = out.split("Session ", 1)[1].split()[0]
    assert not session_containers(docker.from_env(), session, all=True)
    assert not list(workspaces.rglob("s-*")) and not list(workspaces.glob("g-*"))


def test_a_listening_gateway_service_is_used_and_no_change_creates_no_branch(
    tmp_path, repo, api, key, workspaces, agent_image
):
    """The model key only in the gateway service: the command runs without any credential."""
    served = GatewaySettings.parse(
        ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=api.url, WORKSPACE_ROOT=str(workspaces)
    )
    api.script([Text("The README already greets; nothing to change.")])
    branches = git(repo, "branch", "--list")
    with embedded(served):
        done = cli(
            tmp_path,
            cli_env(tmp_path, workspaces),
            "run",
            "--repo",
            str(repo),
            "--model",
            "claude-sonnet-4-5",
            TASK,
        )
    assert done.returncode == 4, done.stdout + done.stderr
    assert {r.body["model"] for r in api.main_requests()} == {"claude-sonnet-4-5"}
    assert "Claude changed nothing, so no branch was created." in done.stdout
    assert "The README already greets; nothing to change." in done.stdout
    assert git(repo, "branch", "--list") == branches
    assert api.main_requests() and all(r.api_key == key for r in api.main_requests())


def test_a_failing_session_says_why_and_creates_no_branch(
    tmp_path, repo, api, key, workspaces, agent_image
):
    api.script([Fail(500, "api_error", "the model is down")])
    branches = git(repo, "branch", "--list")
    env = cli_env(tmp_path, workspaces, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=api.url)
    done = cli(tmp_path, env, "run", "--repo", str(repo), TASK)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "❌ The session failed:" in done.stdout and "No branch was created." in done.stdout
    assert git(repo, "branch", "--list") == branches


def test_a_session_past_its_timeout_is_ended_and_creates_no_branch(
    tmp_path, repo, api, key, workspaces, agent_image
):
    release = threading.Event()
    api.script([ToolUse("Bash", {"command": "echo late > late.txt"}, hold=release)])
    env = cli_env(tmp_path, workspaces, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=api.url)
    try:
        done = cli(tmp_path, env, "run", "--repo", str(repo), "--timeout", "5", TASK)
    finally:
        release.set()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "❌ The session failed: timed out after 5s" in done.stdout
    assert git(repo, "branch", "--list") == "* main\n"
    assert not list(workspaces.rglob("s-*"))


def test_ctrl_c_stops_the_sandbox_and_removes_it(tmp_path, repo, api, key, workspaces, agent_image):
    release = threading.Event()
    api.script(
        [
            ToolUse("Bash", {"command": "echo late > late.txt"}, hold=release),
            Text("never reached"),
        ]
    )
    env = cli_env(tmp_path, workspaces, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=api.url)
    branches = git(repo, "branch", "--list")
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "run", "--repo", str(repo), TASK],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        session = first.split("Session ", 1)[1].split()[0]
        label = {"label": f"{LABEL}={session}"}
        wait_for(lambda: api.main_requests(), 180, what="claude to ask the model")
        assert docker.from_env().containers.list(filters=label)  # the sandbox is running
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, first + out + err
    assert "Stopped (Ctrl-C): the sandbox was removed and nothing was committed." in out
    assert not docker.from_env().containers.list(all=True, filters=label)
    assert not list(workspaces.rglob("s-*"))
    assert git(repo, "branch", "--list") == branches


def test_a_path_that_is_no_git_repository_is_refused(tmp_path, workspaces):
    plain = tmp_path / "plain"
    plain.mkdir()
    done = cli(tmp_path, cli_env(tmp_path, workspaces), "run", "--repo", str(plain), TASK)
    assert done.returncode == 2
    assert f"{plain} is not a git repository" in done.stderr


def test_a_repository_without_commits_is_refused(tmp_path, workspaces):
    empty = tmp_path / "empty"
    git(tmp_path, "init", "--quiet", str(empty))
    done = cli(tmp_path, cli_env(tmp_path, workspaces), "run", "--repo", str(empty), TASK)
    assert done.returncode == 2
    assert "has no commits yet" in done.stderr


def test_a_bad_branch_name_is_refused(tmp_path, repo, workspaces):
    env = cli_env(tmp_path, workspaces)
    done = cli(tmp_path, env, "run", "--repo", str(repo), "--branch", "bad..name", TASK)
    assert done.returncode == 2
    assert "'bad..name' is not a valid branch name" in done.stderr


def test_without_a_model_credential_it_says_which_to_set(tmp_path, repo, workspaces):
    done = cli(tmp_path, cli_env(tmp_path, workspaces), "run", "--repo", str(repo), TASK)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no model credential: no model backend is configured: set ANTHROPIC_API_KEY" in (
        done.stderr
    )
    assert git(repo, "branch", "--list") == "* main\n"


def test_an_unreachable_docker_engine_is_named(tmp_path, repo, key, workspaces):
    env = cli_env(
        tmp_path, workspaces, ANTHROPIC_API_KEY=key, DOCKER_HOST=f"unix://{tmp_path}/no.sock"
    )
    done = cli(tmp_path, env, "run", "--repo", str(repo), TASK)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the Docker engine is not reachable" in done.stderr
    assert key not in done.stdout + done.stderr


def test_a_missing_agent_image_says_how_to_build_it(tmp_path, repo, key, workspaces):
    missing = f"claudecluster/agent:missing-{secrets.token_hex(4)}"
    env = cli_env(tmp_path, workspaces, ANTHROPIC_API_KEY=key, AGENT_IMAGE=missing)
    done = cli(tmp_path, env, "run", "--repo", str(repo), TASK)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"the agent image {missing} is not built" in done.stderr
    assert "scripts/build-images.sh" in done.stderr


def test_an_empty_task_is_refused(tmp_path, repo, workspaces):
    done = cli(tmp_path, cli_env(tmp_path, workspaces), "run", "--repo", str(repo), "  ")
    assert done.returncode == 2
    assert "the task is empty" in done.stderr
