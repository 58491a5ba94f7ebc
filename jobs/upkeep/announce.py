"""Telling a session that waits for its installation's slot that it is queued, and why.

The fair pick (jobs/common/fairness.py) leaves such a session where it is in the queue and
hands it here once; a thread of the worker posts "⏳ Queued: …" on its thread, with the
session's marker in state `queued`. When the session starts it takes the comment over
(jobs/common/queued.py); `/claude stop` finds it through the thread (app/enqueue.py); crash
recovery ends it like a working one (jobs/upkeep/interrupted.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

from githubkit.exception import GitHubException
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.common import queued
from jobs.common.queue import RUN_SESSION
from jobs.common.request import SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.client import RepoSession
from jobs.github.pacing import Pacer
from jobs.github.tracking import TrackingComment

log = logging.getLogger(__name__)

PERMISSIONS = {"issues": "write", "pull_requests": "write", "metadata": "read"}


def why(running: int, limit: int) -> str:
    sessions = (
        "session of this installation is" if running == 1 else "sessions of this installation are"
    )
    return (
        f"{running} {sessions} running, and its limit is {limit} "
        "(`MAX_SESSIONS_PER_INSTALLATION`). This one starts when one of them ends; other "
        "installations' requests do not wait behind this installation's."
    )


def announce(settings: WorkerSettings, redis: Redis, session_id: str, running: int) -> str:
    """Post the queued comment of `session_id`; what happened (`posted`, or why not)."""
    try:
        job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return "gone"
    if job.func_name != RUN_SESSION or job.get_status(refresh=False) != JobStatus.QUEUED:
        return "not queued"
    request = SessionRequest.from_job(dict(job.kwargs))
    if not queued.claim_posting(redis, session_id):
        return "started"
    try:
        github = RepoSession(settings, request.installation_id, request.repo, PERMISSIONS)
        try:
            tracking = TrackingComment(
                github, request, session_id, Pacer(redis, request.installation_id)
            )
            tracking.queued(why(running, settings.max_sessions_per_installation))
        finally:
            with contextlib.suppress(GitHubException):
                github.revoke()
    except BaseException:
        queued.not_posted(redis, session_id)
        raise
    queued.posted(redis, session_id, request.thread, tracking.comment_id, tracking.url)
    return "posted"


class Announcer:
    """A worker's thread that posts the queued comments, off the worker's dequeue."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)  # its own: the worker's is not shared
        self._todo: queue.Queue[tuple[str, int]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def put(self, waiting: list[tuple[str, int]]) -> None:
        for entry in waiting:
            self._todo.put(entry)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            session_id, running = self._todo.get()
            try:
                outcome = announce(self.settings, self.redis, session_id, running)
                log.info("session %s: queued comment %s", session_id, outcome)
            except Exception as exc:  # retried: the next pick hands it over again
                log.warning(
                    "session %s: queued comment not posted (%s)", session_id, type(exc).__name__
                )
