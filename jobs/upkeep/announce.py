"""Telling a session that waits in the queue that it is queued, and why.

A session waits for its installation's slot, or for a free worker. The fair pick
(jobs/common/fairness.py) leaves the first kind where it is in the queue and hands it here once;
the second kind no worker is free to pick, so each worker's announcer also looks at the queue's
head every `SCAN_EVERY` seconds and takes the sessions that have waited `BUSY_AFTER` seconds
with no word yet (its note key, set once by whoever takes it). A thread of the worker posts
"⏳ Queued: …" on the session's thread, with the session's marker in state `queued`. When the
session starts it takes the comment over (jobs/common/queued.py); `/claude stop` finds it
through the thread (app/enqueue.py); crash recovery ends it like a working one
(jobs/upkeep/interrupted.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

from githubkit.exception import GitHubException
from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from jobs.common import queued
from jobs.common.fairness import job_installation, running
from jobs.common.queue import DELIVERY_TTL, RUN_SESSION, session_queue
from jobs.common.queued import note_key
from jobs.common.request import SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.client import RepoSession
from jobs.github.pacing import Pacer
from jobs.github.tracking import TrackingComment

log = logging.getLogger(__name__)

PERMISSIONS = {"issues": "write", "pull_requests": "write", "metadata": "read"}
# A request should hear back within seconds: one waiting this long for a free worker is told.
BUSY_AFTER = 5.0
SCAN_EVERY = 2.0
SCANNED = 20  # of the queue's head: the requests most likely to be asking "is it on?"


def why_busy(workers: int, ahead: int) -> str:
    requests = "request is" if ahead == 1 else "requests are"
    if not workers:
        return f"no worker is running, and {ahead} {requests} ahead of this one in the queue."
    every = "the one worker is" if workers == 1 else f"all {workers} workers are"
    return (
        f"{every} busy with other sessions, and {ahead} {requests} ahead of this one in the "
        "queue. It starts when a worker is free."
    )


def overdue(
    settings: WorkerSettings, redis: Redis, queue: Queue, after: float = BUSY_AFTER
) -> list[tuple[str, str]]:
    """Sessions at the queue's head that have waited `after` seconds with no word, each with
    why it waits; each is taken (its note key set) so that one announcer tells it, once."""
    ids = [raw.decode() for raw in redis.lrange(queue.key, 0, SCANNED - 1)]
    if not ids:
        return []
    workers = Worker.count(connection=redis, queue=queue)
    limit = settings.max_sessions_per_installation
    found = []
    for ahead, session_id in enumerate(ids):
        if redis.exists(note_key(session_id)):
            continue
        try:
            job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        # Only sessions that run a sandbox: a stop or help answers as soon as it is taken.
        installation = job_installation(job)
        if not installation or job.enqueued_at is None:
            continue
        if (now() - job.enqueued_at).total_seconds() < after:
            continue
        if not redis.set(note_key(session_id), "noted", nx=True, ex=DELIVERY_TTL):
            continue  # another worker's announcer took it
        at = running(redis, installation)
        found.append(
            (session_id, why(at, limit) if limit and at >= limit else why_busy(workers, ahead))
        )
    return found


def why(running: int, limit: int) -> str:
    sessions = (
        "session of this installation is" if running == 1 else "sessions of this installation are"
    )
    return (
        f"{running} {sessions} running, and its limit is {limit} "
        "(`MAX_SESSIONS_PER_INSTALLATION`). This one starts when one of them ends; other "
        "installations' requests do not wait behind this installation's."
    )


def announce(settings: WorkerSettings, redis: Redis, session_id: str, reason: str) -> str:
    """Post the queued comment of `session_id`, saying `reason`; what happened (`posted`, or
    why not)."""
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
            tracking.queued(reason)
        finally:
            with contextlib.suppress(GitHubException):
                github.revoke()
    except BaseException:
        queued.not_posted(redis, session_id)
        raise
    queued.posted(redis, session_id, request.thread, tracking.comment_id, tracking.url)
    return "posted"


class Announcer:
    """A worker's thread that posts the queued comments, off the worker's dequeue: of the
    sessions the fair pick found at their limit, and of those left waiting for a worker."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)  # its own: the worker's is not shared
        self.queue = session_queue(self.redis, settings.queue_name)
        self._todo: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
                self._thread.start()

    def put(self, waiting: list[tuple[str, int]]) -> None:
        limit = self.settings.max_sessions_per_installation
        for session_id, running_now in waiting:
            self._todo.put((session_id, why(running_now, limit)))
        self.start()

    def _run(self) -> None:
        while True:
            try:
                entries = [self._todo.get(timeout=SCAN_EVERY)]
            except queue.Empty:
                entries = self._overdue()
            for session_id, reason in entries:
                self._announce(session_id, reason)

    def _overdue(self) -> list[tuple[str, str]]:
        try:
            return overdue(self.settings, self.redis, self.queue)
        except Exception as exc:  # Redis away for a moment: the next look
            log.warning("queued comments: queue not read (%s)", type(exc).__name__)
            return []

    def _announce(self, session_id: str, reason: str) -> None:
        try:
            outcome = announce(self.settings, self.redis, session_id, reason)
            log.info("session %s: queued comment %s", session_id, outcome)
        except Exception as exc:  # retried: the next pick hands it over again
            log.warning(
                "session %s: queued comment not posted (%s)", session_id, type(exc).__name__
            )
