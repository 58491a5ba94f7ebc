"""The sessions the service knows, as Redis holds them, and a stop request as the web makes one.

A session is an RQ job on the sessions queue (jobs/common/queue.py): queued in the queue's list,
then in its started, finished or failed registry, with the `SessionRequest` as the job's
arguments (plain values: no token is ever queued), its result or failure once it ended, and the
thread's mark (`active_key`) and stop keys while it runs (jobs/session/thread.py).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.common.queue import (
    RUN_SESSION,
    active_key,
    session_queue,
    stop_key,
    stop_requests_key,
)
from jobs.common.redact import redactor
from jobs.common.request import SessionRequest
from jobs.common.settings import WorkerSettings

STOP_REQUEST_TTL = 3600  # as app/enqueue.py's request_stop keeps a stop request
T = TypeVar("T")
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")


class RedisUnreachable(RuntimeError):
    """Redis did not answer; the message names REDIS_URL (without its password)."""


def github_login(login: str) -> str:
    """`login` if it has a GitHub login's shape, else ValueError."""
    if not _LOGIN.fullmatch(login):
        raise ValueError(f"{login!r} is not a GitHub login")
    return login


def shown_url(url: str) -> str:
    """REDIS_URL as it may be printed: a password in it is replaced."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass
class KnownSession:
    job: Job
    request: SessionRequest | None  # None: the job's arguments are not a request we can read
    state: str  # queued, running, waiting, stopping, finished, failed, stopped, canceled …

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def thread(self) -> str:
        if self.request is None:
            return "?"
        return f"{'PR' if self.request.pull else 'issue'} #{self.request.number}"

    @property
    def seconds(self) -> float | None:
        """How long it ran (so far, while it runs)."""
        started = self.job.started_at
        if started is None:
            return None
        ended = self.job.ended_at or datetime.now(UTC).replace(tzinfo=None)
        return max(0.0, (_naive(ended) - _naive(started)).total_seconds())

    def outcome(self) -> dict:
        """The session's own result (status, pull request, branch, cost …), redacted."""
        try:
            value = self.job.return_value()
        except Exception:  # a result this process cannot read: shown as none
            return {}
        if not isinstance(value, dict):
            return {}
        return {str(k): redactor(v) for k, v in value.items() if not isinstance(v, dict | list)}

    def failure(self) -> str:
        """The last line of the job's exception, when RQ recorded one (redacted)."""
        try:
            result = self.job.latest_result()
        except Exception:
            return ""
        text = (getattr(result, "exc_string", None) or self.job.exc_info or "").strip()
        return redactor(text.splitlines()[-1]) if text else ""


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class SessionStore:
    """The sessions queue in the service's Redis (REDIS_URL, QUEUE_NAME)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        # A CLI answers at once: no retries against a Redis that is not there.
        self.redis = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            socket_timeout=10,
            retry=Retry(NoBackoff(), 0),
        )
        self.queue = session_queue(self.redis, settings.queue_name)

    def _guarded(self, what: Callable[[], T]) -> T:
        try:
            return what()
        except RedisError as exc:
            raise RedisUnreachable(
                f"Redis is not reachable at REDIS_URL={shown_url(self.settings.redis_url)} "
                f"({type(exc).__name__})"
            ) from None

    def all(self, limit: int = 50) -> list[KnownSession]:
        """The newest `limit` sessions, newest first."""
        return self._guarded(lambda: self._all(limit))

    def _all(self, limit: int) -> list[KnownSession]:
        queue = self.queue
        # cleanup=False: a registry's cleanup fails abandoned jobs and runs their failure
        # callbacks, which belong to the worker and its upkeep, not to a reader.
        ids = set(queue.get_job_ids())
        for registry in (
            queue.started_job_registry,
            queue.finished_job_registry,
            queue.failed_job_registry,
            queue.canceled_job_registry,
            queue.deferred_job_registry,
            queue.scheduled_job_registry,
        ):
            ids.update(registry.get_job_ids(cleanup=False))
        jobs = Job.fetch_many(sorted(ids), connection=self.redis, serializer=JSONSerializer)
        found = [self._described(job) for job in jobs if job is not None]
        sessions = [s for s in found if s is not None]
        sessions.sort(key=lambda s: _naive(s.job.enqueued_at or datetime.min), reverse=True)
        return sessions[:limit]

    def find(self, session_id: str) -> KnownSession | None:
        """The session by its id (`session-…`) or by the delivery id it came from."""
        return self._guarded(lambda: self._find(session_id))

    def _find(self, session_id: str) -> KnownSession | None:
        for candidate in dict.fromkeys([session_id, f"session-{session_id}"]):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", candidate):
                continue
            try:
                job = Job.fetch(candidate, connection=self.redis, serializer=JSONSerializer)
            except RedisError:
                raise  # Redis away: said as such, not as an unknown session
            except Exception:  # no such job, or a hash that is not one
                continue
            if (found := self._described(job)) is not None:
                return found
        return None

    def _described(self, job: Job) -> KnownSession | None:
        try:
            if job.func_name != RUN_SESSION:
                return None  # the redelivery sweep and anything else on the queue
            kwargs = job.kwargs
        except Exception:  # unreadable data: not a session this reader can show
            return None
        try:
            request = SessionRequest.from_job(kwargs)
        except (TypeError, ValueError):
            request = None
        return KnownSession(job, request, self._state(job, request))

    def _state(self, job: Job, request: SessionRequest | None) -> str:
        status = job.get_status(refresh=False)
        if status != JobStatus.STARTED:
            return str(status.value if status else "unknown")
        if self.redis.exists(stop_key(job.id)):
            return "stopping"
        if request is not None:
            holder = self.redis.get(active_key(request.thread))
            if holder is not None and holder.decode() != job.id:
                return "waiting"  # for the session already running on its thread
        return "running"

    def request_stop(self, session: KnownSession, login: str) -> None:
        """What `/claude stop` does (app/enqueue.py `request_stop`): the login joins the
        session's stop requests, which its sandbox's stop check reads; it stops the session if
        that login may trigger there (whoever started it may), and says who stopped it."""
        key = stop_requests_key(session.id)

        def push() -> None:
            self.redis.rpush(key, login)
            self.redis.expire(key, STOP_REQUEST_TTL)

        self._guarded(push)
