"""One agent session, from a queued `/claude` request to a pull request and a final comment.

`run_session` reads top to bottom as the session's steps. Whatever fails, the container is gone,
the token is revoked, and the tracking comment ends in a final state with a redacted reason.
"""

from __future__ import annotations

import logging
import re
import time

from githubkit.exception import GitHubException, RequestFailed
from rq import get_current_job

from app.config import WORKER_REQUIRED, Settings, load_settings
from app.enqueue import session_id_for
from jobs.gateway import ModelGateway
from jobs.github import ISSUE_SESSION_PERMISSIONS, RepoSession, bot_identity
from jobs.prompt import issue_prompt
from jobs.redact import redactor
from jobs.request import SessionRequest
from jobs.sandbox import Sandbox, SandboxError, SandboxRun
from jobs.tracking import TrackingComment, stats
from jobs.workspace import GitError, Workspace

log = logging.getLogger(__name__)


def run_session(**job: object) -> dict:
    request = SessionRequest.from_job(job)
    settings = load_settings(*WORKER_REQUIRED)
    current = get_current_job()
    session_id = current.id if current else session_id_for(request.delivery_id)
    started = time.monotonic()

    try:
        github = RepoSession(
            settings, request.installation_id, request.repo, ISSUE_SESSION_PERMISSIONS
        )
    except Exception as exc:
        # Without a token nothing can be posted: the log is the only place to say why.
        reason = describe_failure(exc)
        log.error("session %s: no token for %s: %s", session_id, request.repo, reason)
        return {"status": "failed", "reason": reason}
    tracking = TrackingComment(github, request.number, session_id, request.instruction)
    try:
        tracking.start(request.comment_id)
        return _issue_to_pull_request(settings, request, session_id, github, tracking, started)
    except Exception as exc:
        reason = describe_failure(exc)
        log.exception("session %s failed: %s", session_id, reason)
        if tracking.comment_id:
            tracking.failed(reason, seconds=time.monotonic() - started)
        return {"status": "failed", "reason": reason}
    finally:
        try:
            github.revoke()
        except GitHubException:
            log.warning(
                "session %s: token revocation failed; it expires within the hour", session_id
            )


def _issue_to_pull_request(
    settings: Settings,
    request: SessionRequest,
    session_id: str,
    github: RepoSession,
    tracking: TrackingComment,
    started: float,
) -> dict:
    repository = github.repository()
    issue = github.issue(request.number)
    base = repository["default_branch"]
    workspace = Workspace.clone(
        settings.workspace_root, repository["clone_url"], base, github.token
    )
    try:
        run = run_agent(settings, session_id, workspace, issue_prompt(request, issue, base))
        elapsed = time.monotonic() - started
        outcome = run.outcome
        if run.timed_out:
            tracking.failed(f"timed out after {settings.session_timeout}s", outcome, elapsed)
            return {"status": "timed_out"}
        if outcome.is_error:
            tracking.failed(outcome.failure, outcome, elapsed)
            return {"status": "failed", "reason": redactor(outcome.failure)}

        bot = bot_identity(settings, github)
        change = workspace.commit(commit_message(request, outcome.result), bot.login, bot.email)
        if change is None:
            tracking.no_changes(outcome, elapsed)
            return {"status": "no_changes", "cost_usd": outcome.cost_usd}

        branch = workspace.free_branch(branch_name(request.number, issue.get("title") or ""))
        workspace.push(branch)
        pull = github.open_pull(
            title=title_line(
                request.instruction or issue.get("title") or f"Issue #{request.number}"
            ),
            head=branch,
            base=base,
            body=pull_body(request, outcome.result, stats(outcome, elapsed)),
        )
        tracking.pull_request_opened(pull, outcome, time.monotonic() - started)
        return {
            "status": "pull_request",
            "pull_request": pull["html_url"],
            "branch": branch,
            "commit": change.sha,
            "cost_usd": outcome.cost_usd,
            "turns": outcome.num_turns,
        }
    finally:
        workspace.remove()


def run_agent(settings: Settings, session_id: str, workspace: Workspace, prompt: str) -> SandboxRun:
    control = workspace.root / "control"
    control.mkdir(mode=0o755)
    upstream_key = settings.anthropic_api_key or ""
    with ModelGateway(control / "gateway.sock", settings.anthropic_base_url, upstream_key) as gw:
        return Sandbox(settings).run(
            session_id, workspace.tree, control, gw.session_key, prompt, settings.session_timeout
        )


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, SandboxError | GitError):
        reason = str(exc)
    elif isinstance(exc, RequestFailed):
        sent = exc.response.raw_request
        reason = f"GitHub answered {exc.response.status_code} to {sent.method} {sent.url.path}"
    elif isinstance(exc, GitHubException):
        reason = "GitHub could not be reached"
    else:
        reason = f"internal error ({type(exc).__name__})"
    return redactor(reason)


def slug(text: str, limit: int = 30) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "task"


def branch_name(number: int, title: str) -> str:
    return f"claude/issue-{number}-{slug(title)}"


def title_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "Changes by Claude"
    line = line[0].upper() + line[1:]
    return line if len(line) <= 72 else line[:71].rstrip() + "…"


def commit_message(request: SessionRequest, summary: str) -> str:
    body = summary.strip()[:4000]
    return (
        f"{title_line(request.instruction or f'Resolve issue #{request.number}')}\n\n"
        f"{body}\n\nRequested by @{request.requester} in #{request.number}.\n\n"
        f"Co-authored-by: {request.requester} "
        f"<{request.requester_id}+{request.requester}@users.noreply.github.com>\n"
    )


def pull_body(request: SessionRequest, summary: str, footer: str) -> str:
    return redactor(
        f"Closes #{request.number}\n\n{summary.strip()[:50_000]}\n\n---\n"
        f"Requested by @{request.requester} in #{request.number}. {footer}"
    )
