"""The one-round-trip enqueue writes exactly the job RQ itself would, against a real Redis."""

from __future__ import annotations

from redis import Redis
from rq.job import Job, JobStatus

from app.enqueue import JOB_MARGIN
from jobs.common.fairness import installation_meta
from jobs.common.queue import (
    DELIVERY_TTL,
    ON_FAILURE,
    ON_STOPPED,
    RUN_SESSION,
    claim_key,
    session_queue,
)
from jobs.common.request import SessionRequest
from tests.support import enqueue

TIMESTAMPS = {b"created_at", b"enqueued_at"}


def request(delivery: str) -> SessionRequest:
    # Non-ASCII on purpose: the job's text fields travel to Redis as one JSON argument.
    return SessionRequest(
        delivery_id=delivery,
        installation_id=42,
        repo="octo-org/ünïcødé",
        number=7,
        requester="zoë",
        requester_id=583231,
        instruction="fix the “flaky” test\nand say why",
        comment_id=99,
        pull=True,
        triggered_at="2026-11-27T03:00:00Z",
    )


def test_the_job_hash_is_what_rq_enqueue_call_writes(redis_url):
    redis = Redis.from_url(redis_url)
    queue = session_queue(redis, "sessions")
    ours = request("ours-1")
    queued = enqueue(redis, ours, timeout=600)
    assert not queued.duplicate
    theirs = queue.enqueue_call(
        RUN_SESSION,
        kwargs=ours.to_job(),
        job_id="session-theirs",
        timeout=600 + JOB_MARGIN,
        result_ttl=DELIVERY_TTL,
        failure_ttl=DELIVERY_TTL,
        description=f"{ours.repo}#{ours.number} by {ours.requester}",
        on_failure=ON_FAILURE,
        on_stopped=ON_STOPPED,
        meta=installation_meta(ours),
    )

    mine = redis.hgetall(f"rq:job:{queued.session_id}")
    rqs = redis.hgetall(theirs.key)
    assert set(mine) == set(rqs)
    differing = {k for k in mine if mine[k] != rqs[k]}
    assert differing <= TIMESTAMPS, {k: (mine[k], rqs[k]) for k in differing - TIMESTAMPS}

    job = Job.fetch(queued.session_id, connection=redis, serializer="json")
    assert job.kwargs == ours.to_job()
    assert job.get_status() == JobStatus.QUEUED
    assert job.meta == {"installation": "42"}  # whose slot it takes (jobs/common/fairness.py)
    assert queue.job_ids == [queued.session_id, "session-theirs"]
    assert redis.get(claim_key("ours-1")) == queued.session_id.encode()


def test_a_second_enqueue_of_the_same_delivery_is_a_duplicate(redis_url):
    redis = Redis.from_url(redis_url)
    first = enqueue(redis, request("twice"))
    second = enqueue(redis, request("twice"))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.session_id == second.session_id
    assert session_queue(redis, "sessions").job_ids == [first.session_id]
