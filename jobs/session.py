"""One agent session, from a queued request to a pull request, commits or a review.

`run_session` reads top to bottom as the session's steps; the three kinds of work (an issue into
a pull request, new commits on a pull request, a review) follow it. Whatever fails, the container
is gone, the token is revoked, and the tracking comment ends in a final state with a redacted
reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from githubkit.exception import GitHubException, RequestFailed
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from app.config import WorkerSettings
from app.enqueue import active_key, session_id_for, stop_key, stop_requests_key
from app.repo_hints import write_hints
from jobs.context import Section, clean, gather
from jobs.control import ControlError
from jobs.egress_service import SOCKET_NAME as EGRESS_SOCKET
from jobs.egress_service import session_egress
from jobs.fork_flow import offer_to_fork
from jobs.gateway_service import SOCKET_NAME, session_gateway
from jobs.github import (
    ISSUE_SESSION_PERMISSIONS,
    READ_PERMISSIONS,
    REVIEW_SESSION_PERMISSIONS,
    BotIdentity,
    RepoSession,
    bot_identity,
)
from jobs.help import help_text
from jobs.pricing import family
from jobs.prompt import implement_prompt
from jobs.redact import redactor
from jobs.repo_config import (
    RepoConfig,
    RepoConfigError,
    bot_allowed,
    load_repo_config,
    mode_for_label,
    permission_at_least,
)
from jobs.request import Mode, SessionRequest, Trigger
from jobs.sandbox import Limits, Sandbox, SandboxError, SandboxRun
from jobs.tracking import PUBLISHING, RUNNING, TrackingComment, took
from jobs.transcript import Outcome
from jobs.workspace import Change, GitError, Workspace

log = logging.getLogger(__name__)


def run_session(**job: object) -> dict:
    request = SessionRequest.from_job(job)
    settings = WorkerSettings.load()
    current = get_current_job()
    session_id = current.id if current else session_id_for(request.delivery_id)
    redis = current.connection if current else Redis.from_url(settings.redis_url)

    try:
        permissions = {Mode.REVIEW: REVIEW_SESSION_PERMISSIONS, Mode.REFRESH: READ_PERMISSIONS}.get(
            request.mode
        )
        github = RepoSession(
            settings, request.installation_id, request.repo,
            permissions or ISSUE_SESSION_PERMISSIONS,
        )  # fmt: skip
    except Exception as exc:
        # Without a token nothing can be posted: the log is the only place to say why.
        reason = describe_failure(exc)
        log.error("session %s: no token for %s: %s", session_id, request.repo, reason)
        return {"status": "failed", "reason": reason}
    try:
        return _run(settings, request, session_id, github, redis)
    finally:
        try:
            github.revoke()
        except GitHubException:
            log.warning("session %s: token revocation failed; it expires within the hour",
                        session_id)  # fmt: skip


def _run(settings: WorkerSettings, request: SessionRequest, session_id: str, github: RepoSession,
         redis: Redis) -> dict:  # fmt: skip
    from jobs.pacing import Pacer

    tracking = TrackingComment(github, request, session_id, Pacer(redis, request.installation_id))
    try:
        repository = github.repository()
        try:
            config = load_repo_config(github, repository["default_branch"])
        except RepoConfigError as exc:
            if request.mode == Mode.REFRESH:
                return {"status": "invalid_config", "reason": str(exc)}  # no thread to answer on
            tracking.answered("⚠️ **`.github/claude.yml` is invalid, so nothing ran.**", str(exc))
            return {"status": "invalid_config", "reason": str(exc)}

        write_hints(redis, request.repo, config.trigger, config.allowed_bots)
        mode = decide_mode(request, config)
        if mode is None:
            # A label or push this repository does not act on, a refresh, or an old phrase.
            return {"status": "ignored", "trigger": config.trigger}
        tracking.mode = mode
        if not (role := may_trigger(github, config, request.requester)):
            tracking.answered(
                f"🚫 **@{request.requester}, only collaborators with {config.min_permission} "
                "access can ask Claude to work here.**", "",
            )  # fmt: skip
            return {"status": "refused", "role": role.name}
        if mode == Mode.HELP:
            unknown = (
                f"`{request.instruction}` is not a command.\n\n" if request.instruction else ""
            )
            tracking.answered("ℹ️ **How to ask Claude here**", unknown + help_text(config, settings))
            return {"status": "help"}
        if mode == Mode.STOP:
            tracking.answered("ℹ️ **Nothing is running here, so there is nothing to stop.**", "")
            return {"status": "nothing_to_stop"}
        if not model_allowed(settings, config):
            tracking.answered(
                f"⚠️ **`.github/claude.yml` asks for the model `{config.model}`, which this "
                "service does not allow, so nothing ran.**",
                f"Allowed: {', '.join(settings.allowed_models or [])} (CLAUDE_ALLOWED_MODELS).",
            )
            return {"status": "invalid_config", "reason": "model not allowed"}
        if mode == Mode.REVIEW and not request.pull:
            tracking.answered("ℹ️ **`review` works on pull requests.**", help_text(config, settings))
            return {"status": "help"}

        tracking.start()
        with active(redis, request.thread, session_id, settings.session_timeout, tracking):
            if mode == Mode.REVIEW:
                from jobs.review_flow import review_pull

                return review_pull(settings, config, request, session_id, github, repository,
                                   tracking, redis)  # fmt: skip
            if request.pull:
                return implement_pull(settings, config, request, session_id, github, repository,
                                      tracking, redis)  # fmt: skip
            return implement_issue(settings, config, request, session_id, github, repository,
                                   tracking, redis)  # fmt: skip
    except Exception as exc:
        reason = describe_failure(exc)
        log.exception("session %s failed: %s", session_id, reason)
        with contextlib.suppress(GitHubException):
            tracking.failed(reason)
        return {"status": "failed", "reason": reason}


@dataclass(frozen=True)
class Role:
    name: str  # GitHub's role_name, or "bot" for a bot the config names
    allowed: bool

    def __bool__(self) -> bool:
        return self.allowed


def may_trigger(github: RepoSession, config: RepoConfig, login: str) -> Role:
    """Whether `login` may trigger (and so stop) sessions here: GitHub's answer, never the
    payload's author_association. Bots the config names are trusted by name: an App's bot is no
    collaborator."""
    if bot_allowed(config, login):
        return Role("bot", True)
    role = github.permission(login)
    return Role(role, permission_at_least(role, config.min_permission))


class StopCheck:
    """The sandbox's stop check: the first stop request from someone who may trigger here
    stops the session; anyone else gets a short refusal and the session runs on."""

    def __init__(
        self, redis: Redis, session_id: str, config: RepoConfig, tracking: TrackingComment
    ) -> None:
        self.redis, self.session_id = redis, session_id
        self.config, self.tracking = config, tracking
        self._allowed = {tracking.request.requester}  # who started it may stop it

    def __call__(self) -> bool:
        if self.redis.exists(stop_key(self.session_id)):
            return True
        while raw := self.redis.lpop(stop_requests_key(self.session_id)):
            login = raw.decode()
            try:
                allowed = login in self._allowed or may_trigger(
                    self.tracking.github, self.config, login
                )
            except Exception:
                # GitHub away for a moment: ask again at the next check, lose nobody's stop.
                self.redis.lpush(stop_requests_key(self.session_id), login)
                raise
            if allowed:
                self.redis.set(stop_key(self.session_id), login, ex=3600)
                return True
            log.info("session %s: stop by %s refused", self.session_id, login)
            self.tracking.stop_refused(login, self.config.min_permission)
        return False


def decide_mode(request: SessionRequest, config: RepoConfig) -> str | None:
    """The mode this request runs in, or None when the repository does not act on it."""
    if request.mode == Mode.REFRESH:
        return None
    if request.trigger.commented and (request.phrase != config.trigger):
        return None  # the front door matched a phrase this repository no longer uses
    if request.trigger == Trigger.LABEL:
        return mode_for_label(config, request.label)
    if request.trigger == Trigger.PUSH:
        if not config.rerun_on_push:
            return None
        modes = [mode_for_label(config, name) for name in request.label.split(",") if name]
        return next((m for m in modes if m), None)
    return request.mode


@contextlib.contextmanager
def active(redis: Redis, thread: str, session_id: str, timeout: int,
           tracking: TrackingComment, poll: float = 3.0) -> Iterator[None]:  # fmt: skip
    """Hold the thread for this session: one session per issue or PR, the next one waits.

    The mark also lets `/claude stop` find the running session. It expires on its own, so a
    crashed worker cannot hold a thread forever.
    """
    key = active_key(thread)
    deadline = time.monotonic() + timeout
    announced = False
    while not redis.set(key, session_id, nx=True, ex=timeout + 600):
        holder = redis.get(key)
        if holder is not None and holder.decode() == session_id:
            break  # a retry of this very session
        if time.monotonic() > deadline:
            raise ThreadBusy(f"another session on #{thread.rsplit('#', 1)[1]} ran past the timeout")
        if not announced:
            tracking.waiting()
            announced = True
        time.sleep(poll)
    try:
        yield
    finally:
        try:
            # Only our own mark: a stale one may have expired and been taken over.
            if (redis.get(key) or b"").decode() == session_id:
                redis.delete(key)
            redis.delete(stop_key(session_id), stop_requests_key(session_id))
        except RedisError as exc:
            # The session's answer is out; the mark expires on its own (timeout + 10 min).
            log.warning("session %s: thread mark not cleared, Redis unreachable (%s)",
                        session_id, type(exc).__name__)  # fmt: skip


class ThreadBusy(RuntimeError):
    """The thread stayed busy with another session for longer than a session may run."""


def stop_requested(redis: Redis, session_id: str) -> str | None:
    value = redis.get(stop_key(session_id))
    return value.decode() if value else None


def limits_for(settings: WorkerSettings, config: RepoConfig) -> Limits:
    return Limits(
        timeout=min(settings.session_timeout, config.timeout_minutes * 60),
        max_turns=min(settings.max_turns, config.max_turns),
        model=config.model or settings.model,
        max_budget_usd=config.max_budget_usd,
        append_system_prompt=config.instructions,
    )


def model_allowed(settings: WorkerSettings, config: RepoConfig) -> bool:
    if not (settings.allowed_models and config.model):
        return True
    return family(config.model) in {family(m) for m in settings.allowed_models}


def allowed_models(settings: WorkerSettings, config: RepoConfig) -> list[str] | None:
    """The model families the session's gateway lets through: the service's, narrowed by the
    repository's `model` (and haiku, for the CLI's small side requests); None: any."""
    allowed = {family(m) for m in settings.allowed_models} if settings.allowed_models else None
    if config.model:
        wanted = {family(config.model), "haiku"}
        allowed = wanted if allowed is None else allowed & wanted
    return None if allowed is None else sorted(allowed)


def run_agent(
    settings: WorkerSettings,
    config: RepoConfig,
    session_id: str,
    workspace: Workspace,
    prompt: str,
    tracking: TrackingComment,
    redis: Redis,
    extra_args: list[str] | None = None,
    run_setup: bool = True,
) -> SandboxRun:
    """Run the CLI in the session's sandbox. `run_setup=False` leaves the repository's setup
    commands out: a fork's `npm ci` would run the fork's code where nothing else does."""
    control = workspace.control
    tracking.advance(RUNNING)
    limits = limits_for(settings, config)
    # Package registries only by the repository's consent, through an allowlisting proxy.
    # In a process of its own: the proxy parses the sandbox's traffic, and this one holds the
    # App's key and the Docker socket.
    egress = (
        session_egress(settings, session_id, control / EGRESS_SOCKET, limits.timeout + 60)
        if config.network.registries
        else None
    )
    # The gateway process holds the model key; this worker only learns the session's key.
    # The CLI's own --max-budget-usd is advisory inside a hostile sandbox; the gateway's is not.
    gateway = session_gateway(
        settings,
        session_id,
        control / SOCKET_NAME,
        config.max_budget_usd,
        limits.timeout + 60,
        allowed_models(settings, config),
    )
    with egress or contextlib.nullcontext(), gateway as lease:
        run = Sandbox(settings).run(
            session_id, workspace.tree, control, lease.key, prompt,
            limits, extra_args=extra_args, on_action=tracking.action,
            should_stop=StopCheck(redis, session_id, config, tracking),
            setup=config.setup if run_setup else (),
        )  # fmt: skip
    # What the comments report is the gateway's count, not what the sandbox printed: a steered
    # agent can print any result line it likes.
    if lease.usage:
        run.outcome.cost_usd = float(lease.usage.get("cost_usd") or 0.0)
        run.outcome.num_turns = int(lease.usage.get("requests") or 0)
    return run


def finished_badly(run: SandboxRun, tracking: TrackingComment, redis: Redis, session_id: str,
                   timeout: int, save_partial=None) -> dict | None:  # fmt: skip
    """Final comment and result for a run that was stopped, timed out or failed; else None.

    A run that timed out may have done useful work: `save_partial` pushes it to a branch of
    its own (no pull request) and the comment says where.
    """
    outcome = run.outcome
    if run.stopped:
        tracking.stopped(stop_requested(redis, session_id) or "a collaborator", outcome)
        return {"status": "stopped"}
    if run.timed_out:
        branch = save_partial() if save_partial else None
        where = f" Its partial work is on the branch `{branch}`." if branch else ""
        tracking.failed(f"timed out after {took(timeout)}.{where}", outcome)
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
    settings: WorkerSettings,
    config: RepoConfig,
    request: SessionRequest,
    session_id: str,
    github: RepoSession,
    workspace: Workspace,
    prompt: str,
    tracking: TrackingComment,
    redis: Redis,
    default: str,
    title: str,
    save_partial: bool = True,
) -> Work | dict:
    """Run the agent and commit what it left; a dict is already the session's final result.

    `save_partial=False`: a run that timed out pushes nothing (a fork's commits must not reach
    a branch of the base repository)."""
    bot = bot_identity(settings, github, redis)
    run = run_agent(settings, config, session_id, workspace, prompt, tracking, redis)
    partial = (
        partial_saver(config, request, bot, workspace, default, title) if save_partial else None
    )
    timeout = limits_for(settings, config).timeout
    if bad := finished_badly(run, tracking, redis, session_id, timeout, partial):
        return bad
    outcome = run.outcome
    change = workspace.commit(
        commit_message(request, outcome.result), bot.login, bot.email, withheld_paths(config)
    )
    note = withheld_note(change)
    if change is None or not change.sha:
        tracking.no_changes(outcome, note)
        return {"status": "no_changes", "cost_usd": outcome.cost_usd}
    tracking.advance(PUBLISHING)
    return Work(outcome, change, note)


def implement_issue(settings: WorkerSettings, config: RepoConfig, request: SessionRequest,
                    session_id: str, github: RepoSession, repository: dict,
                    tracking: TrackingComment, redis: Redis) -> dict:  # fmt: skip
    issue = github.issue(request.number)
    base = repository["default_branch"]
    material = gather(github, request, issue, request.triggered_at)
    workspace = Workspace.clone(
        settings.workspace_root, repository["clone_url"], base, github.token, session_id
    )
    try:
        prompt = implement_prompt(request, f"branch {base}", material)
        work = agent_work(settings, config, request, session_id, github, workspace, prompt,
                          tracking, redis, base, issue.get("title") or "")  # fmt: skip
        if isinstance(work, dict):
            return work
        outcome, change, note = work.outcome, work.change, work.note
        wanted = f"{config.branch_prefix}issue-{request.number}-{slug(issue.get('title') or '')}"
        branch = workspace.free_branch(wanted)
        workspace.push(branch, protected=(base,))
        title = request.instruction or issue.get("title") or f"Issue #{request.number}"
        pull = github.open_pull(
            title=title_line(title), head=branch, base=base,
            body=pull_body(request, outcome.result, f"Closes #{request.number}"),
            draft=config.draft_pull_requests,
        )  # fmt: skip
        tracking.pull_request_opened(pull, outcome, note)
        return {
            "status": "pull_request", "pull_request": pull["html_url"], "branch": branch,
            "commit": change.sha, "cost_usd": outcome.cost_usd, "turns": outcome.num_turns,
        }  # fmt: skip
    finally:
        workspace.remove()


def implement_pull(settings: WorkerSettings, config: RepoConfig, request: SessionRequest,
                   session_id: str, github: RepoSession, repository: dict,
                   tracking: TrackingComment, redis: Redis) -> dict:  # fmt: skip
    pull = github.pull(request.number)
    head_repo = (pull.get("head") or {}).get("repo") or {}
    same_repo = head_repo.get("full_name") == repository["full_name"]
    head_ref = pull["head"]["ref"]
    # A fork's head cannot be pushed with this installation's token: fetch it through the base
    # repository's refs/pull/N/head and offer the work back (suggestions and a patch), or as a
    # follow-up pull request where the repository asks for one. Either way, on the head the
    # request was made on: its author may have pushed since a maintainer read the diff.
    ref = head_ref if same_repo else f"refs/pull/{request.number}/head"
    accepted_head = request.head_sha or pull["head"]["sha"]
    suggest = not same_repo and config.fork_pull_requests == "suggest"
    focus, pointed_at = focus_for(github, request)
    material = (
        gather(github, request, pull, request.triggered_at, diff=github.pull_diff(request.number))
        + pointed_at
    )
    workspace = Workspace.clone(
        settings.workspace_root, repository["clone_url"], ref, github.token, session_id
    )
    try:
        if not same_repo and workspace.base_sha != accepted_head:
            tracking.head_moved(accepted_head, workspace.base_sha)
            return {"status": "head_moved", "accepted": accepted_head, "now": workspace.base_sha}
        prompt = implement_prompt(request, f"the pull request's head, {head_ref}", material,
                                  focus=focus)  # fmt: skip
        default = repository["default_branch"]
        work = agent_work(
            settings,
            config,
            request,
            session_id,
            github,
            workspace,
            prompt,
            tracking,
            redis,
            default,
            pull.get("title") or "",
            save_partial=not suggest,
        )
        if isinstance(work, dict):
            return work
        outcome, change, note = work.outcome, work.change, work.note
        if same_repo:
            workspace.push(head_ref, protected=(default,))
            commit_url = f"{repository['html_url']}/commit/{change.sha}"
            tracking.pushed(head_ref, commit_url, change.files, outcome, note)
            return {"status": "pushed", "branch": head_ref, "commit": change.sha,
                    "cost_usd": outcome.cost_usd}  # fmt: skip
        if suggest:
            return offer_to_fork(github, request, workspace, outcome, note, tracking)
        wanted = f"{config.branch_prefix}pr-{request.number}-{slug(pull.get('title') or '')}"
        branch = workspace.free_branch(wanted)
        workspace.push(branch, protected=(default,))
        follow_up = github.open_pull(
            title=title_line(f"Follow-up to #{request.number}: {pull.get('title') or ''}"),
            head=branch, base=pull["base"]["ref"],
            body=pull_body(request, outcome.result,
                           f"Follow-up to #{request.number}, built on its head from "
                           f"{head_repo.get('full_name') or 'a fork'}."),
            draft=config.draft_pull_requests,
        )  # fmt: skip
        note += (
            f"#{request.number} comes from a fork, which this app cannot push to, so the changes "
            f"are in a follow-up pull request built on its head (`{branch}`)."
        )
        tracking.pull_request_opened(follow_up, outcome, note=note)
        return {"status": "follow_up", "pull_request": follow_up["html_url"], "branch": branch}
    finally:
        workspace.remove()


WORKFLOWS = ".github/workflows/"


def partial_saver(
    config: RepoConfig,
    request: SessionRequest,
    bot: BotIdentity,
    workspace: Workspace,
    default: str,
    title: str,
):
    def save() -> str | None:
        message = commit_message(request, "Partial work: the session timed out.")
        change = workspace.commit(message, bot.login, bot.email, withheld_paths(config))
        if change is None or not change.sha:
            return None
        kind = "pr" if request.pull else "issue"
        wanted = f"{config.branch_prefix}{kind}-{request.number}-{slug(title)}-partial"
        branch = workspace.free_branch(wanted)
        workspace.push(branch, protected=(default,))
        return branch

    return save


def withheld_paths(config: RepoConfig) -> tuple[str, ...]:
    # Workflow files run with the repository's secrets on the next push: only by consent.
    return () if config.allow_workflow_changes else (WORKFLOWS,)


def withheld_note(change) -> str:
    if change is None or not change.withheld:
        return ""
    listed = ", ".join(f"`{path}`" for path in change.withheld[:20])
    return (
        f"⚠️ Changes to workflow files were left out: {listed}. Workflows run with this "
        "repository's secrets; set `allow_workflow_changes: true` in `.github/claude.yml` to "
        "let Claude change them.\n\n"
    )


def focus_for(github: RepoSession, request: SessionRequest) -> tuple[str, list[Section]]:
    """For inline and review triggers: where in the code the request points, as a sentence of
    ours and the quoted material it points at (the diff hunk, the review's comments)."""
    if request.review_comment_id:
        comment = github.review_comment(request.review_comment_id)
        start, end = comment.get("start_line") or comment.get("line"), comment.get("line")
        lines = f"line {end}" if start == end else f"lines {start}–{end}"
        hunk = Section(
            "diff_hunk",
            clean((comment.get("diff_hunk") or "")[-4000:]),
            {"path": comment.get("path"), "lines": lines},
        )
        return (
            "The request was made on a line of the diff: the <diff_hunk> in the material shows "
            f"where ({lines} of the file its path attribute names).",
            [hunk],
        )
    if request.review_id:
        comments = github.comments_of_review(request.number, request.review_id)
        quoted = [
            Section(
                "review_comment",
                clean(c.get("body"), 1500),
                {"path": c.get("path"), "line": c.get("line"), "review": request.review_id},
            )
            for c in comments
        ]
        return (
            "The request came with a review: its inline comments, quoted in the material as "
            f'<review_comment review="{request.review_id}">, are part of the task.',
            quoted,
        )
    return "", []


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, SandboxError | GitError | ControlError):
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


def title_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "Changes by Claude"
    line = line[0].upper() + line[1:]
    return line if len(line) <= 72 else line[:71].rstrip() + "…"


def commit_message(request: SessionRequest, summary: str) -> str:
    thread = "pull request" if request.pull else "issue"
    body = summary.strip()[:4000]
    return (
        f"{title_line(request.instruction or f'Resolve {thread} #{request.number}')}\n\n"
        f"{body}\n\nRequested by @{request.requester} in #{request.number}.\n\n"
        f"Co-authored-by: {request.requester} "
        f"<{request.requester_id}+{request.requester}@users.noreply.github.com>\n"
    )


def pull_body(request: SessionRequest, summary: str, lead: str) -> str:
    return redactor(
        f"{lead}\n\n{summary.strip()[:50_000]}\n\n---\n"
        f"Requested by @{request.requester} in #{request.number}."
    )
