"""Every model backend with the real CLI in the real sandbox: it edits a file through the gateway,
and the sandbox holds none of the backend's secrets (the attack reads everything it can).

Real dockerd, the agent image and the real `claude` CLI in it; the gateway in this process in
front of each backend's stand-in (tests/standins/model_backends.py), which checks the credential
the gateway added. The CLI runs in the mode the backend gives it (`Backend.cli_env`): the
Messages API, or Bedrock's and Vertex's skip-auth base-URL modes pointed at the relay.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs.gateway.backends import selected
from jobs.gateway.proxy import ModelGateway
from jobs.sandbox.container import LABEL, RELAY_URL, SLOT_FILE, Limits, Sandbox, SandboxJob
from tests.standins.anthropic import Text, ToolUse
from tests.standins.model_backends import KINDS, backend_kit
from tests.support import wait_for
from tests.test_sandbox import client, session_dirs, settings

__all__ = ["client", "session_dirs"]  # fixtures of tests/test_sandbox.py, used here

# Everything the agent can read of its environment: its own, every process's it can see (the
# CLI's among them), and every file in the CLI's config dir.
LEAK = (
    "{ env; echo ---; tr '\\0' '\\n' < /proc/self/environ; echo ---; "
    "for p in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $p; echo; done; echo ---; "
    "find /home/node/.claude -type f -exec cat {} +; } > /workspace/leak.txt 2>&1"
)
# The variables that carry a backend's credential: none may be set in the sandbox.
CREDENTIAL_VARIABLES = (
    "ANTHROPIC_AUTH_TOKEN=",
    "CLAUDE_CODE_OAUTH_TOKEN=",
    "AWS_ACCESS_KEY_ID=",
    "AWS_SECRET_ACCESS_KEY=",
    "AWS_SESSION_TOKEN=",
    "AWS_PROFILE=",
    "GOOGLE_APPLICATION_CREDENTIALS=",
)
# What shows the CLI ran in the backend's mode (the leak read the environment at all).
MODE = {
    "anthropic-api-key": "ANTHROPIC_BASE_URL=" + RELAY_URL,
    "claude-subscription": "ANTHROPIC_BASE_URL=" + RELAY_URL,
    "llm-gateway": "ANTHROPIC_BASE_URL=" + RELAY_URL,
    "bedrock": "ANTHROPIC_BEDROCK_BASE_URL=" + RELAY_URL,
    "vertex": "ANTHROPIC_VERTEX_BASE_URL=" + RELAY_URL,
}


def sandbox_container(client, tree, name: str):
    """The container running the job: the warm slot's, or the fresh one with the job's label."""
    slot = tree.parent / SLOT_FILE
    if slot.exists():
        return client.containers.get(slot.read_text().strip())
    (container,) = client.containers.list(filters={"label": f"{LABEL}=unit-backend-{name}"})
    return container


def job_for(gw: ModelGateway, tree, control, name: str) -> SandboxJob:
    return SandboxJob(
        session_id=f"unit-backend-{name}",
        tree=tree,
        control=control,
        model_env=gw.backend.cli_env(RELAY_URL, gw.session_key),
        prompt="Follow the script.",
        limits=Limits(timeout=180, max_turns=8),
    )


@pytest.mark.parametrize("name", KINDS)
def test_the_real_cli_edits_a_file_through_each_backend_and_holds_no_secret(
    name, client, session_dirs, tmp_path
):
    tree, control = session_dirs
    inspected = threading.Event()
    with backend_kit(name, tmp_path) as kit:
        kit.api.script(
            [
                ToolUse("Bash", {"command": LEAK}, hold=inspected),
                ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": f"via {name}\n"}),
                Text("wrote NOTES.md"),
            ]
        )
        with (
            ModelGateway(control / "gateway.sock", selected(kit.settings())) as gw,
            ThreadPoolExecutor(1) as pool,
        ):
            sandbox = Sandbox(settings(CLAUDE_MAX_RETRIES="0"), client)
            running = pool.submit(sandbox.run, job_for(gw, tree, control, name))
            try:
                # While the CLI waits for its first answer: the engine's view of the sandbox.
                wait_for(lambda: kit.api.message_requests(), 120, what="the CLI's first request")
                container = sandbox_container(client, tree, name)
                environment = "\n".join(container.attrs["Config"]["Env"])
            finally:
                inspected.set()
            run = running.result(timeout=300)
            usage = gw.usage
        secrets = kit.secrets
    assert run.exit_code == 0 and not run.outcome.is_error, run.stderr_tail
    assert run.outcome.result == "wrote NOTES.md"
    assert (tree / "NOTES.md").read_text() == f"via {name}\n"
    assert kit.refused() == 0 and usage.requests >= 3 and usage.cost_usd > 0
    leak = (tree / "leak.txt").read_text()
    assert MODE[name] in leak  # the attack did read it
    # A fresh container is defined with the session's environment; a warm one with none of it
    # (the pool made it before the session; the CLI's exec carries the environment).
    warm = (tree.parent / SLOT_FILE).exists()
    assert (MODE[name] in environment) != warm
    assert leak.count("CLAUDE_CONFIG_DIR=") >= 2  # its own environ and the CLI's
    assert secrets
    for where in (environment, leak):
        for secret in secrets:
            assert secret not in where
        for variable in CREDENTIAL_VARIABLES:
            assert f"\n{variable}" not in f"\n{where}"


@pytest.mark.parametrize("name", KINDS)
def test_a_wrong_credential_ends_the_cli_run_and_the_gateway_reports_it(
    name, client, session_dirs, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="jobs.gateway.proxy")
    tree, control = session_dirs
    with backend_kit(name, tmp_path) as kit:
        kit.api.script([ToolUse("Write", {"file_path": "/workspace/X.md", "content": "x"})])
        settings_ = kit.wrong_settings()
        with ModelGateway(control / "gateway.sock", selected(settings_)) as gw:
            sandbox = Sandbox(settings(CLAUDE_MAX_RETRIES="0"), client)
            run = sandbox.run(job_for(gw, tree, control, name))
        refused = kit.refused()
        requests = kit.api.message_requests()
        leaked = [s for s in kit.secrets if s in caplog.text or s in run.stderr_tail]
    assert run.outcome.is_error and not (tree / "X.md").exists()
    assert refused >= 1 and requests == []
    assert any(
        f"{name} refused the gateway's credential" in r.getMessage()
        or f"{name}: no credential" in r.getMessage()
        for r in caplog.records
    )
    assert not leaked
