"""Redis is an attack surface: the worker runs only its own job functions and callbacks.

Someone who can write to Redis can queue a job naming any importable function. Real Redis and
the real RQ worker class: such jobs are refused and logged, their names never imported (a canary
module marks any import), and the worker goes on serving.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq.job import Callback, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from jobs.common.queue import RUN_SESSION, session_queue
from jobs.worker import SessionJob, SessionWorker

CANARY = "tests.standins.canary.touch"


@pytest.fixture
def canary(tmp_path, monkeypatch):
    imported = tmp_path / "imported"
    monkeypatch.setenv("CLAUDECLUSTER_CANARY", str(imported))
    return imported


def test_foreign_jobs_are_refused_and_never_imported(redis_url, tmp_path, canary, caplog):
    redis = Redis.from_url(redis_url)
    queue = session_queue(redis, "attacked")
    ran = tmp_path / "ran"
    jobs = [
        queue.enqueue_call(CANARY, args=[str(ran)]),
        queue.enqueue_call("os.system", args=[f"touch {ran}"]),
        # One of ours by name, with a callback of the attacker's.
        queue.enqueue_call(RUN_SESSION, kwargs={}, on_failure=Callback(CANARY)),
    ]
    worker = SessionWorker([queue], connection=redis, serializer=JSONSerializer)
    with caplog.at_level(logging.ERROR, logger="jobs.worker"):
        worker.work(burst=True)

    assert not canary.exists(), "the worker imported a module a foreign job named"
    assert not ran.exists()
    failed = FailedJobRegistry(queue.name, redis, serializer=JSONSerializer)
    for job in jobs:
        job.refresh()
        assert job.get_status() == JobStatus.FAILED
        assert job.id in failed.get_job_ids()
        assert "refused:" in (job.latest_result().exc_string or "")
    assert caplog.text.count("refused job") == 3
    assert "os.system" in caplog.text and "callback" in caplog.text


def test_a_foreign_job_in_the_started_registry_is_cleaned_up_without_its_callback(
    redis_url, canary
):
    # RQ's registry cleanup runs the failure callback of a job whose worker vanished.
    redis = Redis.from_url(redis_url)
    queue = session_queue(redis, "attacked")
    job = queue.enqueue_call(RUN_SESSION, kwargs={}, on_failure=Callback(CANARY))
    queue.remove(job)
    registry = StartedJobRegistry(queue.name, redis, serializer=JSONSerializer)
    past = datetime.now(UTC) - timedelta(hours=1)
    redis.zadd(registry.key, {f"{job.id}:exec-1": past.timestamp()})
    worker = SessionWorker([queue], connection=redis, serializer=JSONSerializer)
    assert queue.job_class is SessionJob
    worker.clean_registries()
    assert not canary.exists(), "the registry cleanup imported a foreign callback"
