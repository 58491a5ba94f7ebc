"""One agent session, from a queued request to a pull request, commits or a review.

`run_session` is the RQ job; `run` reads top to bottom as the session's steps. The flows (an
issue into a pull request, commits on a pull request, a fork's pull request, a review) follow
in modules of their own. Whatever fails, the container is gone, the token is revoked, and the
tracking comment ends in a final state with a redacted reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from githubkit.exception import GitHubException, RequestFailed
from redis import Redis
from rq import get_current_job
from rq.job import Job

from jobs.common import queued
from jobs.common.control import ControlError
from jobs.common.history import SessionHistory
from jobs.common.logs import log_ids
from jobs.common.metrics import record_session, series
from jobs.common.queue import session_id_for
from jobs.common.redact import redactor
from jobs.common.repo_hints import write_hints
from jobs.common.request import Mode, SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.checks import CheckRun
from jobs.github.client import (
    ISSUE_SESSION_PERMISSIONS,
    READ_PERMISSIONS,
    REVIEW_SESSION_PERMISSIONS,
    RepoSession,
)
from jobs.github.pacing import Pacer
from jobs.github.tracking import TrackingComment
from jobs.sandbox.container import SandboxError
from jobs.sandbox.workspace import GitError
from jobs.session.ci_flow import fix_ci
from jobs.session.fork_flow import implement_fork_pull
from jobs.session.gate import admit
from jobs.session.issue_flow import implement_issue
from jobs.session.pull_flow import implement_pull
from jobs.session.repo_config import RepoConfigError
from jobs.session.review_flow import review_pull
from jobs.session.state import Session
from jobs.session.thread import hold_thread, stopped_while_queued

log = logging.getLogger(__name__)

PERMISSIONS = {Mode.REVIEW: REVIEW_SESSION_PERMISSIONS, Mode.REFRESH: READ_PERMISSIONS}


def run_session(**job: object) -> dict:
    """The RQ job: the queue carries plain values; the worker mints its own scoped token."""
    request = SessionRequest.from_job(job)
    current = get_current_job()
    session_id = current.id if current else session_id_for(request.delivery_id)
    if current is not None and current.enqueued_at is not None:
        series().queue_wait_seconds.observe(waited(current.enqueued_at))
    started, outcome = time.monotonic(), "error"  # "error": it raised past every handler
    with log_ids(delivery=request.delivery_id, session=session_id):
        log.info("session %s: %s on %s#%s", session_id, request.mode, request.repo, request.number)
        try:
            result = session_job(request, session_id, current)
            outcome = str(result.get("status", "unknown"))
            return result
        finally:
            took = time.monotonic() - started
            record_session(request.mode.value, outcome, took)
            log.info("session %s ended: %s after %.0f s", session_id, outcome, took)


def waited(enqueued_at: datetime) -> float:
    """Seconds since RQ enqueued the job (it keeps UTC times, without a zone on older jobs)."""
    since = enqueued_at if enqueued_at.tzinfo else enqueued_at.replace(tzinfo=UTC)
    return max((datetime.now(UTC) - since).total_seconds(), 0.0)


def session_job(request: SessionRequest, session_id: str, current: Job | None) -> dict:
    settings = WorkerSettings.load()
    redis = current.connection if current else Redis.from_url(settings.redis_url)
    try:
        permissions = PERMISSIONS.get(request.mode, ISSUE_SESSION_PERMISSIONS)
        github = RepoSession(settings, request.installation_id, request.repo, permissions)
    except Exception as exc:
        # Without a token nothing can be posted: the log is the only place to say why.
        reason = describe_failure(exc)
        log.error("session %s: no token for %s: %s", session_id, request.repo, reason)
        return {"status": "failed", "reason": reason}
    pacer = Pacer(redis, request.installation_id)
    history = SessionHistory(redis, session_id, settings)
    check = CheckRun(github, request, session_id, redis)
    tracking = TrackingComment(github, request, session_id, pacer, history, check)
    try:
        return run(Session(session_id, request, settings, redis, github, tracking, check))
    finally:
        try:
            github.revoke()
        except GitHubException:
            log.warning(
                "session %s: token revocation failed; it expires within the hour", session_id
            )


def run(session: Session) -> dict:
    """The session's steps; every way out leaves the tracking comment in a final state."""
    try:
        # The comment that said it waited for its installation's slot, if one did: answered on.
        if found := queued.take(session.redis, session.id, session.request.thread):
            session.tracking.taken_over(*found)
        session.load_repository()
        config = session.config
        write_hints(session.redis, session.request.repo, config.trigger, config.allowed_bots)
        if (answered := admit(session)) is not None:
            return answered
        session.tracking.start()
        session.check.queue()
        if (stopped := stopped_while_queued(session)) is not None:
            return stopped
        with hold_thread(session):
            session.check.start()
            return flow_for(session)(session)
    except RepoConfigError as exc:
        if session.request.mode != Mode.REFRESH:  # a refresh has no thread to answer on
            session.tracking.answered(
                "⚠️ **`.github/claude.yml` is invalid, so nothing ran.**", str(exc)
            )
        return {"status": "invalid_config", "reason": str(exc)}
    except Exception as exc:
        reason = describe_failure(exc)
        log.exception("session %s failed: %s", session.id, reason)
        with contextlib.suppress(GitHubException):
            session.tracking.failed(reason)
        return {"status": "failed", "reason": reason}


def flow_for(session: Session) -> Callable[[Session], dict]:
    if session.mode == Mode.REVIEW:
        return review_pull
    if session.mode == Mode.FIX_CI:
        return fix_ci
    if not session.request.pull:
        return implement_issue
    return implement_fork_pull if session.from_fork else implement_pull


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
