"""Putting a session on the queue exactly once per GitHub delivery.

GitHub reuses `X-GitHub-Delivery` when a delivery is redelivered, so it is the idempotency key:
a Redis `SET NX` claims it (kept for GitHub Enterprise's 7-day redelivery window), and the job id
derived from it makes RQ refuse a second job even if the claim were lost.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs.request import SessionRequest

DELIVERY_TTL = 7 * 24 * 3600
RUN_SESSION = "jobs.session.run_session"
# Clone, push and comment around the sandbox's own wall clock.
JOB_MARGIN = 300


@dataclass(frozen=True)
class Enqueued:
    session_id: str
    duplicate: bool


def session_id_for(delivery_id: str) -> str:
    # RQ job ids allow only letters, digits, '_' and '-'; GitHub's GUIDs fit, others are hashed.
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}", delivery_id):
        return f"session-{delivery_id}"
    return "session-" + hashlib.sha256(delivery_id.encode()).hexdigest()[:32]


def session_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def enqueue_session(queue: Queue, request: SessionRequest, timeout: int) -> Enqueued:
    session_id = session_id_for(request.delivery_id)
    claim = f"claudecluster:delivery:{request.delivery_id}"
    redis = queue.connection
    if not redis.set(claim, session_id, nx=True, ex=DELIVERY_TTL):
        return Enqueued(session_id, duplicate=True)
    try:
        queue.enqueue_call(
            RUN_SESSION,
            kwargs=request.to_job(),
            job_id=session_id,
            unique=True,
            timeout=timeout + JOB_MARGIN,
            result_ttl=DELIVERY_TTL,
            failure_ttl=DELIVERY_TTL,
            description=f"{request.repo}#{request.number} by {request.requester}",
        )
    except DuplicateJobError:
        return Enqueued(session_id, duplicate=True)
    except BaseException:
        # Release the claim, and any half-saved job, so GitHub's redelivery can be queued.
        redis.delete(claim, Job.key_for(session_id))
        raise
    return Enqueued(session_id, duplicate=False)


def active_key(thread: str) -> str:
    return f"claudecluster:active:{thread}"


def stop_key(session_id: str) -> str:
    return f"claudecluster:stop:{session_id}"


def request_stop(redis: Redis, request: SessionRequest) -> str | None:
    """Flag the thread's running session to stop; its id, or None when nothing runs.

    The session polls the flag, kills its container and says who stopped it; a stop queued
    behind it as a job would only run after it had finished.
    """
    running = redis.get(active_key(request.thread))
    if running is None:
        return None
    session_id = running.decode()
    redis.set(stop_key(session_id), request.requester, ex=3600)
    return session_id
