"""Putting a session on the queue exactly once per GitHub delivery.

GitHub reuses `X-GitHub-Delivery` when a delivery is redelivered, so it is the idempotency key:
a Redis `SET NX` claims it (kept for GitHub Enterprise's 7-day redelivery window), and the job id
derived from it refuses a second job even if the claim were lost.

Claim and job are written by one Lua script, in one round trip: both or neither. The front door
answers a burst of deliveries, and three round trips per queued session (claim, RQ's queue
registration, RQ's unique-enqueue script) were most of its time; the script writes exactly what
RQ's `enqueue_call(unique=True)` writes (the job hash from `Job.to_dict()`, the queue's list and
`rq:queues`), so the worker sees an ordinary RQ job.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.common import queued
from jobs.common.fairness import installation_meta
from jobs.common.queue import (
    DELIVERY_TTL,
    ON_FAILURE,
    ON_STOPPED,
    RUN_SESSION,
    active_key,
    claim_key,
    session_id_for,
    stop_requests_key,
)
from jobs.common.request import SessionRequest

# How long a trigger's content is remembered: a signed delivery stays valid forever, so a replay
# is recognised by what it is about for much longer than a delivery id is kept.
CONTENT_TTL = 90 * 24 * 3600
# Clone, push and comment around the sandbox's own wall clock.
JOB_MARGIN = 300


@dataclass(frozen=True)
class Enqueued:
    session_id: str
    duplicate: bool


def content_key(request: SessionRequest) -> str:
    """Set once a trigger's content is queued, whatever the delivery id that brought it."""
    what = request.content_id or f"delivery:{request.delivery_id}"
    digest = hashlib.sha256(f"{request.repo}\0{what}".encode()).hexdigest()[:40]
    return f"claudecluster:content:{digest}"


# KEYS: the claim, the job hash, the queue's list, RQ's set of queues, the content's claim.
# ARGV: session id, claim TTL, job TTL (-1: none), queue key, the job hash's text fields as one
# JSON object, then its binary fields (RQ's compressed `data`) as name/value pairs, and last the
# content claim's TTL. One JSON
# argument instead of forty: redis-py packs each argument in Python, and that was a third of the
# front door's time per queued session.
# Returns 1 when queued, 0 for a duplicate (claimed before, or the job exists: RQ's own check),
# and the session that has the content when that was queued before under another delivery id
# (this delivery's claim then stays: it was answered, as a duplicate).
# A write that fails (a key of the wrong type) undoes the claim and the job, then errors, so the
# delivery can be queued when GitHub sends it again.
CLAIM_AND_ENQUEUE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
if not redis.call('SET', KEYS[5], ARGV[1], 'NX', 'EX', ARGV[#ARGV]) then
    return redis.call('GET', KEYS[5])
end
local function undo(reply)
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
    return reply
end
local fields = {}
for name, value in pairs(cjson.decode(ARGV[5])) do
    fields[#fields + 1] = name
    fields[#fields + 1] = value
end
for i = 6, #ARGV - 1 do
    fields[#fields + 1] = ARGV[i]
end
local reply = redis.pcall('HSET', KEYS[2], unpack(fields))
if type(reply) == 'table' and reply.err then return undo(reply) end
if tonumber(ARGV[3]) > 0 then
    redis.call('EXPIRE', KEYS[2], ARGV[3])
end
reply = redis.pcall('RPUSH', KEYS[3], ARGV[1])
if type(reply) == 'table' and reply.err then return undo(reply) end
reply = redis.pcall('SADD', KEYS[4], ARGV[4])
if type(reply) == 'table' and reply.err then return undo(reply) end
return 1
"""


def job_writes(queue: Queue, request: SessionRequest, timeout: int) -> tuple[str, list, list]:
    """(session id, keys, args) of CLAIM_AND_ENQUEUE: what `enqueue_call(unique=True)` saves."""
    session_id = session_id_for(request.delivery_id)
    # RQ builds the job without a round trip; only the script below writes it.
    job = queue.create_job(
        RUN_SESSION,
        kwargs=request.to_job(),
        job_id=session_id,
        timeout=timeout + JOB_MARGIN,
        result_ttl=DELIVERY_TTL,
        failure_ttl=DELIVERY_TTL,
        description=f"{request.repo}#{request.number} by {request.requester}",
        status=JobStatus.QUEUED,
        on_failure=ON_FAILURE,
        on_stopped=ON_STOPPED,
        meta=installation_meta(request),  # whose slot it takes (jobs/common/fairness.py)
    )
    job.origin = queue.name
    job.enqueued_at = datetime.now(UTC)
    text: dict[str, str] = {}
    binary: list[str | bytes] = []
    for name, value in job.to_dict().items():
        if isinstance(value, bytes):
            binary += (name, value)
        elif value is not None:
            text[name] = value if isinstance(value, str) else str(value)
    keys = [
        claim_key(request.delivery_id),
        job.key,
        queue.key,
        queue.redis_queues_keys,
        content_key(request),
    ]
    ttl = job.ttl if job.ttl else -1
    text_fields = json.dumps(text, ensure_ascii=False)
    args = [session_id, DELIVERY_TTL, ttl, queue.key, text_fields, *binary, CONTENT_TTL]
    return session_id, keys, args


async def enqueue_session(
    redis: AsyncRedis, queue: Queue, request: SessionRequest, timeout: int
) -> Enqueued:
    """Queue the session once per delivery; `queue` (sync) only builds the job, `redis` writes."""
    session_id, keys, args = job_writes(queue, request, timeout)
    queued = await redis.register_script(CLAIM_AND_ENQUEUE)(keys=keys, args=args)
    if isinstance(queued, bytes):  # the same content, queued before as this session
        return Enqueued(queued.decode(), duplicate=True)
    return Enqueued(session_id, duplicate=not queued)


async def request_stop(redis: AsyncRedis, request: SessionRequest) -> str | None:
    """Flag the thread's running (or queued) session to stop; its id, or None when none.

    The session polls the requests, checks that each asker may trigger in the repository (the
    web holds no token to ask GitHub), kills its container and says who stopped it; a stop
    queued behind it as a job would only run after it had finished.
    """
    running = await redis.get(active_key(request.thread))
    if running is None:
        # A session still queued, waiting for its installation's slot: asked to stop, it is
        # taken off the queue's wait (jobs/common/fairness.py) and stops before it runs.
        running = await redis.get(queued.thread_key(request.thread))
        if running is None or await redis.hget(Job.key_for(running.decode()), "status") != (
            JobStatus.QUEUED.value.encode()
        ):
            return None
    session_id = running.decode()
    key = stop_requests_key(session_id)
    await redis.rpush(key, request.requester)
    await redis.expire(key, 3600)
    return session_id


async def queued_request(redis: AsyncRedis, session_id: str) -> SessionRequest | None:
    """The request a session was queued with, from its RQ job (kept `DELIVERY_TTL`), or None
    when Redis no longer has it or it is not a session's job."""
    data = await redis.hget(Job.key_for(session_id), "data")
    if data is None:
        return None
    try:
        function, _instance, _args, values = JSONSerializer.loads(zlib.decompress(data))
        if function != RUN_SESSION or not isinstance(values, dict):
            return None
        return SessionRequest.from_job(values)
    except (zlib.error, ValueError, TypeError):
        return None


# KEYS: the delivery's claim, the content's claim, the thread's mark, the session's stop list.
# ARGV: session id, the claims' TTLs (delivery, content), the login, the stop list's TTL.
# Returns 1 when the stop request is queued, 0 for a duplicate, -1 when the session is not
# running (any more): its thread is free or held by another session; the click's content is
# then free again, so the same person's next click on a run that does run is heard.
CLAIM_AND_STOP = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return 0
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[3]) then
    return 0
end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
    redis.call('DEL', KEYS[2])
    return -1
end
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return 1
"""


async def request_stop_of(redis: AsyncRedis, session_id: str, request: SessionRequest) -> int:
    """`request_stop` for one session by its id (its check run's Stop button), once per
    delivery and per click: 1 asked, 0 a duplicate, -1 not running."""
    keys = [
        claim_key(request.delivery_id),
        content_key(request),
        active_key(request.thread),
        stop_requests_key(session_id),
    ]
    args = [session_id, DELIVERY_TTL, CONTENT_TTL, request.requester, 3600]
    return int(await redis.register_script(CLAIM_AND_STOP)(keys=keys, args=args))
