"""Running the agent: the one step every flow shares, and that imports none of them.

`run_agent` opens the session's model gateway (and, by the repository's consent, its egress
proxy), runs the CLI in the sandbox and reports what the gateway counted. `agent_work` adds
what the implementing flows do next: commit what the agent left, or end the session when it
was stopped, timed out or failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from jobs.common.metrics import record_usage, series
from jobs.common.redact import redactor
from jobs.egress.service import SOCKET_NAME as EGRESS_SOCKET
from jobs.egress.service import session_egress
from jobs.gateway.service import SOCKET_NAME as GATEWAY_SOCKET
from jobs.gateway.service import session_gateway
from jobs.github.tracking import PUBLISHING, RUNNING, took
from jobs.sandbox.container import RELAY_URL, Sandbox, SandboxJob, SandboxRun
from jobs.sandbox.transcript import Outcome
from jobs.sandbox.workspace import Change, Workspace
from jobs.session.commits import branch_name, commit_message, withheld_note, withheld_paths
from jobs.session.continuity import keep, resume_refused, resumption, started_over
from jobs.session.gate import allowed_models
from jobs.session.state import Session
from jobs.session.thread import StopCheck, stopped_by


def run_agent(
    session: Session,
    workspace: Workspace,
    prompt: str,
    extra_args: list[str] | None = None,
    run_setup: bool = True,
) -> SandboxRun:
    """Run the CLI in the session's sandbox. `run_setup=False` leaves the repository's setup
    commands out: a fork's `npm ci` would run the fork's code where nothing else does."""
    settings, config, control = session.settings, session.config, workspace.control
    sandbox = Sandbox(settings)
    # A read-only run (a review) neither continues nor leaves a conversation.
    resumed = None if extra_args else resumption(session, sandbox.cli_version())
    if resumed is not None and resumed.note:
        session.tracking.continuity = resumed.note
    session.tracking.advance(RUNNING)
    limits = session.limits
    # Package registries only by the repository's consent, through an allowlisting proxy.
    # In a process of its own: the proxy parses the sandbox's traffic, and this one holds the
    # App's key and the Docker socket.
    egress = (
        session_egress(settings, session.id, control / EGRESS_SOCKET, limits.timeout + 60)
        if config.network.registries
        else None
    )
    # The gateway process holds the model credential; this worker only learns the session's
    # key and the CLI's environment for the backend.
    # The CLI's own --max-budget-usd is advisory inside a hostile sandbox; the gateway's is not.
    gateway = session_gateway(
        settings,
        session.id,
        control / GATEWAY_SOCKET,
        config.max_budget_usd,
        limits.timeout + 60,
        allowed_models(settings, config),
        relay=RELAY_URL,
    )
    with egress or contextlib.nullcontext(), gateway as lease:
        job = SandboxJob(
            session_id=session.id,
            tree=workspace.tree,
            control=control,
            model_env=lease.cli_env,
            prompt=prompt,
            limits=limits,
            extra_args=tuple(extra_args or ()),
            setup=config.setup if run_setup else (),
            conversation=resumed.conversation if resumed else None,
        )
        with series().sandboxes_running.track_inprogress():
            run = sandbox.run(
                job,
                on_action=session.tracking.action,
                should_stop=StopCheck(session),
                on_event=session.tracking.event,
            )
            if resumed is not None and resume_refused(run):
                # The CLI would not resume what passed every check: nothing ran, start over.
                resumed = started_over(resumed)
                session.tracking.continuity = resumed.note
                run = sandbox.run(
                    replace(job, conversation=resumed.conversation),
                    on_action=session.tracking.action,
                    should_stop=StopCheck(session),
                    on_event=session.tracking.event,
                )
    if resumed is not None:
        keep(session, resumed, run, session.tracking.link)
    # What the comments and the metrics report is the gateway's count, not the sandbox's.
    record_usage(lease.usage)
    run.outcome.count_from(lease.usage)
    return run


def finished_badly(
    session: Session, run: SandboxRun, save_partial: Callable[[], str | None] | None = None
) -> dict | None:
    """Final comment and result for a run that was stopped, timed out or failed; else None.

    A run that timed out may have done useful work: `save_partial` pushes it to a branch of
    its own (no pull request) and the comment says where.
    """
    outcome, tracking = run.outcome, session.tracking
    if run.stopped:
        tracking.stopped(stopped_by(session) or "a collaborator", outcome)
        return {"status": "stopped"}
    if run.timed_out:
        branch = save_partial() if save_partial else None
        where = f" Its partial work is on the branch `{branch}`." if branch else ""
        tracking.failed(f"timed out after {took(session.limits.timeout)}.{where}", outcome)
        return {"status": "timed_out", "branch": branch}
    if outcome.is_error:
        tracking.failed(outcome.failure, outcome)
        return {"status": "failed", "reason": redactor(outcome.failure)}
    return None


@dataclass
class Work:
    outcome: Outcome
    change: Change
    note: str  # what the comment must add, e.g. workflow files left out


def agent_work(
    session: Session, workspace: Workspace, prompt: str, title: str, save_partial: bool = True
) -> Work | dict:
    """Run the agent and commit what it left; a dict is already the session's final result.

    `title` names the thread in branch names. `save_partial=False`: a run that timed out pushes
    nothing (a fork's commits must not reach a branch of the base repository)."""
    run = run_agent(session, workspace, prompt)
    partial = partial_saver(session, workspace, title) if save_partial else None
    if bad := finished_badly(session, run, partial):
        return bad
    outcome, bot = run.outcome, session.bot
    change = workspace.commit(
        commit_message(session.request, outcome.result),
        bot.login,
        bot.email,
        withheld_paths(session.config),
    )
    note = withheld_note(change)
    if change is None or not change.sha:
        session.tracking.no_changes(outcome, note)
        return {"status": "no_changes", "cost_usd": outcome.cost_usd}
    session.tracking.advance(PUBLISHING)
    return Work(outcome, change, note)


def partial_saver(session: Session, workspace: Workspace, title: str) -> Callable[[], str | None]:
    def save() -> str | None:
        message = commit_message(session.request, "Partial work: the session timed out.")
        bot = session.bot
        change = workspace.commit(message, bot.login, bot.email, withheld_paths(session.config))
        if change is None or not change.sha:
            return None
        kind = "pr" if session.request.pull else "issue"
        branch = workspace.free_branch(branch_name(session, kind, title, "-partial"))
        workspace.push(branch, protected=(session.default_branch,))
        return branch

    return save
