"""Running the real `claude` CLI headless in a fresh, locked-down container.

The container has no network (the model is reached through the gateway's Unix socket), runs as a
non-root user with every capability dropped, and has memory, CPU, process and wall-clock limits.
Labels name the session so a reaper can find anything a crashed worker left behind. Whatever
happens, the container is removed before `run` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from app.config import Settings
from jobs.transcript import Outcome, Transcript

log = logging.getLogger(__name__)

LABEL = "claudecluster.session"
CONTROL_DIR = "/run/claudecluster"
RELAY_PORT = 8787
SETUP_FAILED = 3  # the entrypoint's exit status when the repository's setup commands fail


class SandboxError(RuntimeError):
    """The container could not be run at all (engine down, image missing, start refused)."""


@dataclass
class SandboxRun:
    outcome: Outcome
    exit_code: int | None
    timed_out: bool
    stderr_tail: str
    stopped: bool = False


@dataclass(frozen=True)
class Limits:
    """What one run may spend; the service's defaults, narrowed by the repository's config."""

    timeout: int
    max_turns: int
    model: str | None = None
    max_budget_usd: float | None = None
    # The maintainers' extra instructions (.github/claude.yml `instructions`).
    append_system_prompt: str = ""


def sandbox_user() -> str:
    # The image's `node` user (uid 1000); a non-root worker runs it as itself so that it can
    # still read and delete what the agent wrote.
    return "1000:1000" if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}"


class Sandbox:
    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except DockerException as exc:
                raise SandboxError(f"the Docker engine is not reachable ({exc})") from None
        return self._client

    def command(self, limits: Limits, extra: list[str]) -> list[str]:
        """`extra` replaces the permission bypass when given (a review is read-only)."""
        cmd = [
            "claude", "-p", "--output-format", "stream-json", "--verbose",
            "--max-turns", str(limits.max_turns),
        ]  # fmt: skip
        if not extra:
            # Safe only because the container is the boundary: no network, no credentials.
            # The repository's own .claude/ settings and .mcp.json are not trusted either.
            cmd += ["--dangerously-skip-permissions", "--setting-sources=user",
                    "--strict-mcp-config"]  # fmt: skip
        if limits.model:
            cmd += ["--model", limits.model]
        if limits.max_budget_usd:
            cmd += ["--max-budget-usd", f"{limits.max_budget_usd:g}"]
        if limits.append_system_prompt:
            cmd += [f"--append-system-prompt={limits.append_system_prompt}"]
        return cmd + extra

    def run(
        self,
        session_id: str,
        tree: Path,
        control: Path,
        session_key: str,
        prompt: str,
        limits: Limits,
        extra_args: list[str] | None = None,
        on_action: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        setup: tuple[str, ...] = (),
    ) -> SandboxRun:
        (control / "prompt.md").write_text(prompt)
        os.chmod(control / "prompt.md", 0o644)
        if setup:
            # Run by the image's entrypoint inside the sandbox, never by the worker.
            (control / "setup.sh").write_text("\n".join(setup) + "\n")
            os.chmod(control / "setup.sh", 0o644)
        try:
            self.client.images.get(self.settings.agent_image)
        except ImageNotFound:
            raise SandboxError(
                f"the agent image {self.settings.agent_image} is not built"
                " (run `bash scripts/build-images.sh`)"
            ) from None
        except DockerException as exc:
            raise SandboxError(f"the Docker engine is not reachable ({exc})") from None
        memory = self.settings.sandbox_memory
        try:
            container = self.client.containers.create(
                self.settings.agent_image,
                command=self.command(limits, extra_args or []),
                user=sandbox_user(),
                working_dir="/workspace",
                network_mode="none",
                environment={
                    "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{RELAY_PORT}",
                    "ANTHROPIC_API_KEY": session_key,
                    "CLAUDECLUSTER_RELAY_PORT": str(RELAY_PORT),
                    "CLAUDE_CODE_MAX_RETRIES": str(self.settings.model_retries),
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "DISABLE_TELEMETRY": "1",
                    "DISABLE_AUTOUPDATER": "1",
                    "DISABLE_ERROR_REPORTING": "1",
                },
                volumes={
                    str(tree): {"bind": "/workspace", "mode": "rw"},
                    str(control): {"bind": CONTROL_DIR, "mode": "rw"},
                },
                labels={LABEL: session_id, "claudecluster.role": "sandbox"},
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=int(self.settings.sandbox_cpus * 1e9),
                pids_limit=self.settings.sandbox_pids,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                init=True,
            )
        except DockerException as exc:
            raise SandboxError(f"the sandbox container could not be created ({exc})") from None
        try:
            return self._watch(container, limits.timeout, on_action, should_stop)
        finally:
            try:
                container.remove(force=True)
            except DockerException as exc:
                log.warning("sandbox %s: removal failed (%s)", session_id, exc)

    def _watch(self, container, timeout: int, on_action, should_stop) -> SandboxRun:
        transcript = Transcript(on_action)
        timed_out = threading.Event()
        stopped = threading.Event()
        finished = threading.Event()

        def stop_at_deadline() -> None:
            timed_out.set()
            with contextlib.suppress(DockerException):  # already gone
                container.kill()

        def watch_for_stop() -> None:
            # `/claude stop` sets a flag in Redis; killing the container ends the log stream.
            while should_stop is not None and not finished.wait(1.0):
                if should_stop():
                    stopped.set()
                    with contextlib.suppress(DockerException):
                        container.kill()
                    return

        timer = threading.Timer(timeout, stop_at_deadline)
        threading.Thread(target=watch_for_stop, daemon=True).start()
        try:
            container.start()
        except DockerException as exc:
            raise SandboxError(f"the sandbox container did not start ({exc})") from None
        timer.start()
        try:
            pending = b""
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    transcript.feed(line.decode("utf-8", "replace"))
            transcript.feed(pending.decode("utf-8", "replace"))
            status = container.wait(timeout=60)
        finally:
            timer.cancel()
            finished.set()
        stderr = container.logs(stdout=False, stderr=True, tail=20).decode("utf-8", "replace")
        if status.get("StatusCode") == SETUP_FAILED:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            transcript.outcome.setup_failed = " / ".join(lines[-4:])[-800:]
        return SandboxRun(
            outcome=transcript.outcome,
            exit_code=status.get("StatusCode"),
            timed_out=timed_out.is_set(),
            stderr_tail=stderr.strip()[-2000:],
            stopped=stopped.is_set(),
        )
