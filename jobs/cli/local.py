"""A session on a local checkout (`claudecluster run`), on the parts a GitHub session uses.

The checkout is read, never written: its commit is fetched into a workspace of the usual kind
(jobs/sandbox/workspace.py: a trusted git directory beside the tree the sandbox gets), the agent
runs in the usual sandbox behind the usual model gateway, and the worker's own commit and push
(`Workspace.commit`, `free_branch`, `push`) put the result on a new branch of the checkout. So
its current branch, index and work tree stay as they were, and nothing the sandbox wrote (hooks,
config, filters, links) is ever run. The model credential stays in the gateway: a gateway service
already listening on its control socket, or one embedded in this process for the run.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from jobs.cli.checkout import BadCheckout, Checkout, inspect_checkout, wanted_branch
from jobs.common.control import ControlError
from jobs.common.redact import redactor
from jobs.common.settings import ConfigError, GatewaySettings, WorkerSettings, env_file
from jobs.gateway.backends import selected
from jobs.gateway.service import SOCKET_NAME as GATEWAY_SOCKET
from jobs.gateway.service import embedded, listening, session_gateway
from jobs.github.tracking import DONE, PREPARING, PUBLISHING, RUNNING, took
from jobs.sandbox.container import (
    RELAY_URL,
    Limits,
    Sandbox,
    SandboxError,
    SandboxJob,
    SandboxRun,
)
from jobs.sandbox.transcript import Outcome
from jobs.sandbox.workspace import Change, GitError, Workspace
from jobs.session.commits import LOCAL_AUTHOR, local_commit_message
from jobs.session.prompt import local_prompt

# Under WORKSPACE_ROOT but not beside the service's own workspaces: a worker's reaper sharing
# the root judges only those, and would take a local run's for an orphan.
LOCAL_DIR = "local"


class LocalRunError(Exception):
    """The run cannot start or failed; `exit_code` tells a script which (see jobs/cli/run.py)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


BAD_INPUT, NOT_SET_UP = 2, 3


@dataclass(frozen=True)
class LocalTask:
    """What the person asked for, with their limits (None: the service's defaults)."""

    repository: Path
    instruction: str
    branch: str | None = None
    model: str | None = None
    max_turns: int | None = None
    budget_usd: float | None = None
    timeout: int | None = None
    keep_workspace: bool = False


@dataclass
class Settings:
    """The worker's settings (limits, image, runtime) without GitHub's, and the gateway's."""

    worker: WorkerSettings
    gateway: GatewaySettings

    @classmethod
    def read(cls) -> Settings:
        try:
            # `parse`, not `load`: no App key is needed here, and this process is the gateway
            # too when it embeds one, so the model key is expected where the gateway reads it.
            worker = WorkerSettings.parse()
            gateway = GatewaySettings.parse(WORKSPACE_ROOT=str(worker.workspace_root))
        except ConfigError as exc:
            raise LocalRunError(f"configuration: {exc}", NOT_SET_UP) from None
        redactor.learn(gateway)
        return cls(worker, gateway)

    def limits(self, task: LocalTask) -> Limits:
        worker = self.worker
        return Limits(
            timeout=task.timeout or worker.session_timeout,
            max_turns=task.max_turns or worker.max_turns,
            model=task.model or worker.model,
            max_budget_usd=task.budget_usd,
        )


def check_model_credential(settings: Settings) -> bool:
    """Whether a gateway service answers (else this process embeds one, which needs the key)."""
    if listening(settings.worker):
        return True
    try:
        selected(settings.gateway)
    except ConfigError as exc:
        raise LocalRunError(
            f"no model credential: {exc}, in the environment or in {env_file('gateway')} "
            "(or start the gateway service)",
            NOT_SET_UP,
        ) from None
    return False


@contextlib.contextmanager
def model_gateway(settings: Settings) -> Iterator[WorkerSettings]:
    """Settings whose gateway socket answers: the service's, or one embedded for this run."""
    if check_model_credential(settings):
        yield settings.worker
        return
    root = settings.worker.workspace_root
    root.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="g-", dir=root))
    socket = private / "gateway.ctl"
    try:
        with embedded(settings.gateway.model_copy(update={"gateway_socket_path": socket})):
            yield settings.worker.model_copy(update={"gateway_socket_path": socket})
    finally:
        shutil.rmtree(private, ignore_errors=True)


class Watcher(Protocol):
    """What the terminal shows of a run; jobs/cli/progress.py draws it."""

    def advance(self, step: int) -> None: ...

    def action(self, description: str) -> None: ...


@dataclass
class LocalResult:
    session_id: str
    checkout: Checkout
    outcome: Outcome
    seconds: float
    branch: str = ""  # the new branch, "" when nothing was committed
    change: Change | None = None
    stopped: bool = False
    failure: str = ""  # why the session failed, redacted
    workspace: Path | None = None  # kept for inspection (--keep-workspace)


@dataclass
class LocalRun:
    """One run: `start` checks everything a run needs, `run` does it."""

    task: LocalTask
    settings: Settings
    watcher: Watcher
    session_id: str = field(default_factory=lambda: f"local-{secrets.token_hex(6)}")
    # Set by Ctrl-C while the sandbox runs: the sandbox's stop check ends it, as `/claude stop`.
    interrupted: threading.Event = field(default_factory=threading.Event)
    in_sandbox: bool = False
    branch: str = ""  # the branch wanted, known once `start` has checked it

    def start(self) -> Checkout:
        task = self.task
        try:
            checkout = inspect_checkout(task.repository)
            self.branch = wanted_branch(checkout.top, task.branch, task.instruction)
        except BadCheckout as exc:
            raise LocalRunError(str(exc), BAD_INPUT) from None
        check_model_credential(self.settings)
        try:
            Sandbox(self.settings.worker).check_image()
        except SandboxError as exc:
            raise LocalRunError(str(exc), NOT_SET_UP) from None
        return checkout

    def run(self, checkout: Checkout) -> LocalResult:
        started = time.monotonic()
        with model_gateway(self.settings) as worker:
            self.watcher.advance(PREPARING)
            parent = worker.workspace_root / LOCAL_DIR
            workspace = Workspace.clone_local(parent, checkout.top, checkout.head, self.session_id)
            try:
                run = self._agent(worker, workspace, checkout)
                result = LocalResult(self.session_id, checkout, run.outcome, 0.0)
                self._finish(workspace, checkout, run, result)
            finally:
                if not self.task.keep_workspace:
                    workspace.remove()
        if self.task.keep_workspace:
            result.workspace = workspace.root
        result.seconds = time.monotonic() - started
        self.watcher.advance(DONE)
        return result

    def _agent(
        self, worker: WorkerSettings, workspace: Workspace, checkout: Checkout
    ) -> SandboxRun:
        self.watcher.advance(RUNNING)
        limits = self.settings.limits(self.task)
        with session_gateway(
            worker,
            self.session_id,
            workspace.control / GATEWAY_SOCKET,
            limits.max_budget_usd,
            limits.timeout + 60,
            worker.allowed_models,
            relay=RELAY_URL,
        ) as lease:
            job = SandboxJob(
                session_id=self.session_id,
                tree=workspace.tree,
                control=workspace.control,
                model_env=lease.cli_env,
                prompt=local_prompt(self.task.instruction, checkout.where),
                limits=limits,
            )
            self.in_sandbox = True
            try:
                run = Sandbox(worker).run(
                    job, on_action=self.watcher.action, should_stop=self.interrupted.is_set
                )
            finally:
                self.in_sandbox = False
        run.outcome.count_from(lease.usage)
        return run

    def _finish(
        self, workspace: Workspace, checkout: Checkout, run: SandboxRun, result: LocalResult
    ) -> None:
        outcome = run.outcome
        if run.stopped:
            result.stopped = True
            return
        if run.timed_out:
            result.failure = f"timed out after {took(self.settings.limits(self.task).timeout)}"
            return
        if outcome.is_error:
            result.failure = redactor(outcome.failure)
            return
        self.watcher.advance(PUBLISHING)
        name, email = LOCAL_AUTHOR
        message = local_commit_message(self.task.instruction, outcome.result, checkout.co_author)
        change = workspace.commit(message, name, email)
        if change is None or not change.sha:
            return
        # Never over an existing branch (`free_branch` picks a new name), never forced, and
        # never the branch the person has checked out.
        branch = workspace.free_branch(self.branch)
        protected = (checkout.branch,) if checkout.branch else ()
        workspace.push(branch, protected=protected)
        result.branch, result.change = branch, change


def describe(exc: BaseException) -> str:
    """A redacted line for what ended a run early."""
    if isinstance(exc, SandboxError | GitError | ControlError | LocalRunError):
        return redactor(str(exc))
    return redactor(f"{type(exc).__name__}: {exc}")


def on_interrupt(run: LocalRun) -> Callable[[int, object], None]:
    """The SIGINT handler: the first Ctrl-C in the sandbox asks it to stop (it is then removed
    as after `/claude stop`); before or after the sandbox, or a second time, it interrupts."""

    def handle(signum: int, frame: object) -> None:
        if run.in_sandbox and not run.interrupted.is_set():
            run.interrupted.set()
            return
        raise KeyboardInterrupt

    return handle
