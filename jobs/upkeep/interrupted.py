"""Ending the tracking comment of a session that could not end it itself.

A session normally turns its own tracking comment into an outcome. When its work horse is
killed (a cold shutdown, RQ's stop-job, the OOM killer, a lost host), nothing of the session
runs any more, and the comment would say "working" for ever. This module ends it instead:

* RQ calls `on_failure` for a job its StartedJobRegistry cleanup finds abandoned (the heartbeat
  lapsed: `AbandonedJobError`), and for a job that raised; `on_stopped` after RQ's stop-job. Both
  are attached at enqueue (app/enqueue.py) by dotted path.
* The reaper (jobs/upkeep/reaper.py) and the worker's own cold-shutdown and killed-horse paths
  (jobs/worker.py) call `interrupt_job` when they find a dead session first.

`interrupt_job` mints a token from the job's plain kwargs, finds the session's own tracking
comment by its marker (`state=working`, or `state=queued` for a session that waited for its
installation's slot; posted by this App), and edits it to a final
"⚠️ Interrupted … comment `/claude …` again to retry" with `state=failed`. It never creates a
comment. It is idempotent: a Redis claim lets one caller do it, and a comment already final is
left alone; until GitHub has answered, the session also sits in a pending set that every reaper
pass retries for a day (GitHub unreachable, or the caller itself killed midway). It also
releases the thread's one-session-at-a-time mark, so the retry the comment asks for does not
wait for that mark to expire.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

from githubkit.exception import GitHubException
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from jobs.common.fairness import release
from jobs.common.history import mark_interrupted
from jobs.common.queue import DELIVERY_TTL, RUN_SESSION, active_key, stop_key, stop_requests_key
from jobs.common.redact import redactor
from jobs.common.request import MARKER, SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.checks import end_interrupted
from jobs.github.client import RepoSession, app_client
from jobs.github.pacing import Pacer
from jobs.github.tracking import fit, marker, quote, took
from jobs.upkeep.leftovers import reap_session, session_running

log = logging.getLogger(__name__)

# Enough to find and edit the comment, in a conversation or in a review thread, and to end the
# session's check run (where the installation has granted `checks`).
PERMISSIONS = {"checks": "write", "issues": "write", "pull_requests": "write", "metadata": "read"}
PENDING = "claudecluster:interrupt:pending"  # sorted set: session id -> first failed attempt
CLAIM_TTL = 120  # seconds one caller holds the session while it asks GitHub
PENDING_FOR = 24 * 3600  # seconds a comment that could not be ended is retried
PACE_LIMIT = 15.0  # seconds to wait for the installation's write budget (callbacks get 60 s)
MAX_PAGES = 30  # 3,000 comments since the session was queued

WORKER_STOPPED = "the worker stopped"
HORSE_KILLED = "the session's process was killed"
OPERATOR_STOPPED = "an operator stopped it"
TIMED_OUT = "the session ran past its time limit"

# Compare-and-delete: the thread's mark only if it is still this session's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def done_key(session_id: str) -> str:
    return f"claudecluster:interrupted:{session_id}"


def headline(why: str, phrase: str = "/claude") -> str:
    return f"⚠️ **Interrupted** ({why}); comment `{phrase} …` again to retry."


def _request(job: Job) -> SessionRequest | None:
    if job.func_name != RUN_SESSION:
        return None
    try:
        return SessionRequest.from_job(dict(job.kwargs))
    except (TypeError, ValueError):
        return None


def release_thread(redis: Redis, request: SessionRequest, session_id: str) -> None:
    redis.eval(_RELEASE, 1, active_key(request.thread), session_id)
    redis.delete(stop_key(session_id), stop_requests_key(session_id))


def interrupt_job(
    job: Job, redis: Redis, why: str = WORKER_STOPPED, settings: WorkerSettings | None = None
) -> str:
    """End `job`'s tracking comment as interrupted. Returns what happened:

    `edited`, `already_final`, `no_comment`, `claimed` (another caller did or does it),
    `not_a_session`; raises when GitHub could not be asked (the session is then pending).
    """
    request = _request(job)
    if request is None:
        return "not_a_session"
    release_thread(redis, request, job.id)
    release(redis, request.installation_id, job.id)  # its slot now, not when the lease ends
    mark_interrupted(redis, job.id, headline(why, request.phrase or "/claude"))
    # A short claim while GitHub is asked; pending until it has answered, so an attempt that
    # is itself killed midway is retried by the next reaper pass once its claim expires.
    if not redis.set(done_key(job.id), "in progress", nx=True, ex=CLAIM_TTL):
        return "claimed"
    redis.zadd(PENDING, {job.id: time.time()}, nx=True)
    redis.set(done_key(job.id) + ":why", why, ex=PENDING_FOR, nx=True)  # for a retry
    try:
        outcome = _end_comment(settings or WorkerSettings.load(), redis, request, job, why)
    except BaseException:
        redis.delete(done_key(job.id))
        raise
    redis.set(done_key(job.id), outcome, ex=DELIVERY_TTL)
    redis.zrem(PENDING, job.id)
    redis.delete(done_key(job.id) + ":why")
    log.info("session %s: tracking comment %s (%s)", job.id, outcome, why)
    return outcome


def retry_pending(redis: Redis, settings: WorkerSettings) -> list[str]:
    """Try again the comments GitHub could not be asked to end; the ids edited now."""
    edited = []
    cutoff = time.time() - PENDING_FOR
    redis.zremrangebyscore(PENDING, 0, cutoff)
    for raw in redis.zrange(PENDING, 0, 50):
        session_id = raw.decode()
        try:
            job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            redis.zrem(PENDING, session_id)
            continue
        why = (redis.get(done_key(session_id) + ":why") or WORKER_STOPPED.encode()).decode()
        try:
            if interrupt_job(job, redis, why, settings) == "edited":
                edited.append(session_id)
        except Exception as exc:
            log.warning(
                "session %s: tracking comment still not ended (%s)", session_id, type(exc).__name__
            )
    return edited


# -- GitHub -------------------------------------------------------------------------------

_bot_logins: dict[tuple[str, int], str] = {}


def bot_login(settings: WorkerSettings) -> str:
    """`<app slug>[bot]`, the author of every tracking comment; asked once per process."""
    key = (settings.github_api_url, settings.github_app_id or 0)
    if key not in _bot_logins:
        app = app_client(settings)  # kept in a variable: `.rest` holds a weak reference
        slug = app.rest.apps.get_authenticated().json()["slug"]
        _bot_logins[key] = f"{slug}[bot]"
    return _bot_logins[key]


def _pages(fetch, limit: int = MAX_PAGES):
    for page in range(1, limit + 1):
        items = fetch(page).json()
        yield from items
        if len(items) < 100:
            return


def find_tracking_comment(
    github: RepoSession,
    request: SessionRequest,
    session_id: str,
    bot: str,
    since: datetime | None,
) -> tuple[dict | None, bool]:
    """(the session's working comment or None, whether a final one exists)."""
    extra = {"since": since} if since else {}
    if request.review_comment_id:

        def fetch(page):  # noqa: E306
            return github.gh.rest.pulls.list_review_comments(
                github.owner, github.name, request.number, per_page=100, page=page, **extra
            )
    else:

        def fetch(page):  # noqa: E306
            return github.gh.rest.issues.list_comments(
                github.owner, github.name, request.number, per_page=100, page=page, **extra
            )

    working = (marker(session_id, "working"), marker(session_id, "queued"))
    ours = f"{MARKER} {session_id} state="
    final = False
    for comment in _pages(fetch):
        body = comment.get("body") or ""
        if ours not in body or (comment.get("user") or {}).get("login") != bot:
            continue  # not this session's, or someone quoting it
        if any(state in body for state in working):
            return comment, final
        final = True
    return None, final


def render(request: SessionRequest, job: Job, why: str) -> str:
    parts = [headline(why, request.phrase or "/claude")]
    if request.instruction:
        parts.append(f"**Request:**\n{quote(fit(request.instruction, 2_000))}")
    began = job.started_at or job.enqueued_at
    if began is not None:
        began = began if began.tzinfo else began.replace(tzinfo=UTC)
        parts.append(f"<sub>⏱ {took((datetime.now(UTC) - began).total_seconds())}</sub>")
    parts.append(marker(job.id, "failed"))
    return redactor("\n\n".join(parts))


def _end_comment(
    settings: WorkerSettings, redis: Redis, request: SessionRequest, job: Job, why: str
) -> str:
    github = RepoSession(settings, request.installation_id, request.repo, PERMISSIONS)
    try:
        since = job.enqueued_at
        if since is not None:
            since = (since if since.tzinfo else since.replace(tzinfo=UTC)) - timedelta(minutes=5)
        comment, final = find_tracking_comment(github, request, job.id, bot_login(settings), since)
        if comment is None:
            return "already_final" if final else "no_comment"
        Pacer(redis, request.installation_id).essential(limit=PACE_LIMIT)
        body = render(request, job, why)
        if request.review_comment_id:
            github.edit_review_comment(comment["id"], body)
        else:
            github.edit_comment(comment["id"], body)
        end_interrupted(github, redis, request, job.id, headline(why, request.phrase or "/claude"))
        return "edited"
    finally:
        with contextlib.suppress(GitHubException):
            github.revoke()


# -- RQ callbacks (attached at enqueue; they must never raise) ----------------------------


def _why(exc_type) -> str:
    from rq.exceptions import AbandonedJobError

    if isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError):
        return WORKER_STOPPED
    if isinstance(exc_type, type) and issubclass(exc_type, JobTimeoutException):
        return TIMED_OUT
    name = getattr(exc_type, "__name__", "an error")
    return f"the session crashed: {name}"


def _docker():
    try:
        import docker

        return docker.from_env()
    except Exception as exc:
        log.warning("no Docker engine to reap with (%s)", type(exc).__name__)
        return None


def on_failure(job: Job, connection: Redis, exc_type, exc_value, tb) -> None:
    """RQ's failure callback: an abandoned job (its worker died) or a job that raised."""
    try:
        from rq.exceptions import AbandonedJobError

        if job.retries_left:
            return  # RQ runs it again (callbacks fire on every failed attempt): not the end
        settings = WorkerSettings.load()
        abandoned = isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)
        if abandoned and not session_running(connection, job):
            reap_session(settings, _docker(), job.id)
        interrupt_job(job, connection, _why(exc_type), settings)
    except Exception:
        # Raising here would abort RQ's registry cleanup for every other job.
        log.exception("session %s: failure callback", job.id)


def on_stopped(job: Job, connection: Redis) -> None:
    """RQ's stopped callback (`rq` stop-job): the horse was SIGKILLed, its `finally` skipped."""
    try:
        settings = WorkerSettings.load()
        reap_session(settings, _docker(), job.id)
        interrupt_job(job, connection, OPERATOR_STOPPED, settings)
    except Exception:
        log.exception("session %s: stopped callback", job.id)
