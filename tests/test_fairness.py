"""Fair sharing on a real Redis and real RQ workers: the per-installation limit, the fair pick,
waiting jobs kept in place, leases that lapse after a crash, at most one run per job with
several workers, and the queued comment on the GitHub stand-in."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now

from app.enqueue import request_stop
from jobs.common import queued
from jobs.common.fairness import SLOTS, Fairness, FairWorker, pick, release, running
from jobs.common.queue import session_queue, stop_requests_key
from jobs.common.request import Mode, SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.tracking import marker
from jobs.upkeep.announce import BUSY_AFTER, Announcer, announce, overdue, why, why_busy
from jobs.upkeep.interrupted import interrupt_job
from tests.standins.github import GitHubStandIn
from tests.support import ROOT, enqueue, wait_for

A, B = 501, 502
REPO_A, REPO_B = "org-a/burst", "org-b/single"


@pytest.fixture
def redis(redis_url) -> Redis:
    return Redis.from_url(redis_url)


@pytest.fixture
def queue(redis) -> Queue:
    return session_queue(redis, "sessions")


def request(installation: int, n: int, mode: Mode = Mode.IMPLEMENT) -> SessionRequest:
    repo = REPO_A if installation == A else REPO_B
    return SessionRequest(
        delivery_id=f"d-{installation}-{n}",
        installation_id=installation,
        repo=repo,
        number=n,
        requester="octocat",
        requester_id=583231,
        instruction=f"task {n}",
        comment_id=0,
        mode=mode,
    )


def burst(redis: Redis, installation: int, count: int, start: int = 1) -> list[str]:
    return [
        enqueue(redis, request(installation, n)).session_id for n in range(start, start + count)
    ]


def test_an_installation_at_its_limit_waits_in_place_and_is_noted_once(redis, queue):
    ids = burst(redis, A, 5)
    limit = Fairness(limit=2)
    assert pick(redis, queue, limit).job_id == ids[0]
    assert pick(redis, queue, limit).job_id == ids[1]
    assert running(redis, A) == 2

    waiting = pick(redis, queue, limit)
    assert waiting.job_id is None
    assert waiting.waiting == [(ids[2], 2), (ids[3], 2), (ids[4], 2)]
    # Deferred, not lost: still queued, in their order; told once, not at every look.
    assert queue.job_ids == ids[2:]
    assert pick(redis, queue, limit).waiting == []
    # The picked ones went where RQ's own dequeue puts them, for its crash cleanup.
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [i.encode() for i in ids[:2]]

    release(redis, A, ids[0])
    assert pick(redis, queue, limit).job_id == ids[2]
    assert queue.job_ids == ids[3:]


def test_no_limit_at_zero(redis, queue):
    ids = burst(redis, A, 6)
    picked = [pick(redis, queue, Fairness(limit=0)).job_id for _ in ids]
    assert picked == ids
    assert running(redis, A) == 6


def test_another_installations_request_goes_before_a_burst(redis, queue):
    a_ids = burst(redis, A, 10)
    (b_id,) = burst(redis, B, 1)
    fair = Fairness(limit=4)
    assert pick(redis, queue, fair).job_id == a_ids[0]
    # A has one running, B none: B's single request is next, not eleventh.
    assert pick(redis, queue, fair).job_id == b_id
    assert pick(redis, queue, fair).job_id == a_ids[1]


def test_with_nothing_running_installations_alternate(redis, queue):
    # One worker, jobs that end before the next pick: the counts are all zero, and the
    # installation that started least recently goes first.
    a_ids = burst(redis, A, 3)
    b_ids = burst(redis, B, 2, start=10)
    order = []
    for _ in range(5):
        job_id = pick(redis, queue, Fairness(limit=4)).job_id
        order.append(job_id)
        release(redis, A if job_id in a_ids else B, job_id)
    assert order == [a_ids[0], b_ids[0], a_ids[1], b_ids[1], a_ids[2]]


def test_only_the_first_scanned_jobs_are_considered(redis, queue):
    a_ids = burst(redis, A, 6)
    (b_id,) = burst(redis, B, 1)
    fair = Fairness(limit=1, scan=5)
    assert pick(redis, queue, fair).job_id == a_ids[0]
    assert pick(redis, queue, fair).job_id is None  # B is past the scanned window
    assert pick(redis, queue, Fairness(limit=1, scan=6)).job_id == b_id


def test_stops_help_and_foreign_jobs_take_no_slot_and_go_first(redis, queue):
    a_ids = burst(redis, A, 3)
    stop = enqueue(redis, request(A, 9, Mode.STOP)).session_id
    fair = Fairness(limit=1)
    assert pick(redis, queue, fair).job_id == stop
    assert running(redis, A) == 0
    assert pick(redis, queue, fair).job_id == a_ids[0]
    # A session someone asked to stop is taken at once, past the limit, to stop before it runs.
    redis.rpush(stop_requests_key(a_ids[2]), "octocat")
    assert pick(redis, queue, fair).job_id == a_ids[2]
    assert queue.job_ids == [a_ids[1]]


def test_a_lease_not_renewed_frees_the_slot(redis, queue):
    ids = burst(redis, A, 2)
    short = Fairness(limit=1, lease=1)
    assert pick(redis, queue, short).job_id == ids[0]
    assert pick(redis, queue, short).job_id is None
    # Nobody renews the first one's lease (its worker died): the slot frees itself.
    wait_for(lambda: pick(redis, queue, short).job_id == ids[1], 30, what="the lapsed slot")


# -- real workers -------------------------------------------------------------------------


def light_job(installation: str, key: str) -> str:
    """A job that records that it ran, and how many of its installation ran at once."""
    from rq import get_current_job

    redis = get_current_job().connection
    now = redis.incr(f"{key}:now:{installation}")
    redis.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        f"{key}:max:{installation}",
        now,
    )
    redis.rpush(f"{key}:ran", get_current_job().id)
    time.sleep(float(redis.get(f"{key}:sleep") or 0.05))
    redis.decr(f"{key}:now:{installation}")
    return "ok"


def run_worker(redis_url: str, limit: int, lease: int, monitoring: int) -> None:
    """A worker process: FairWorker on the test's queue until it is killed."""
    redis = Redis.from_url(redis_url)
    worker = FairWorker(
        [Queue("sessions", connection=redis, serializer=JSONSerializer)],
        connection=redis,
        serializer=JSONSerializer,
        fairness=Fairness(limit=limit, lease=lease, poll=0.2),
        job_monitoring_interval=monitoring,
    )
    worker.work()


def start_worker(redis_url: str, limit: int, lease: int = 90, monitoring: int = 30):
    code = (
        "import sys; from tests.test_fairness import run_worker; "
        f"run_worker({redis_url!r}, {limit}, {lease}, {monitoring})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_workers(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def light(queue: Queue, installation: str, key: str, n: int) -> str:
    job = queue.enqueue(
        light_job,
        installation,
        key,
        job_id=f"light-{installation}-{n}",
        meta={"installation": installation},
    )
    return job.id


def test_three_workers_run_every_job_once_and_no_installation_past_its_limit(
    redis, redis_url, queue
):
    key = "fair-test"
    ids = [light(queue, inst, key, n) for n in range(15) for inst in ("a", "b", "c")]
    procs = [start_worker(redis_url, limit=1) for _ in range(3)]
    try:
        wait_for(lambda: redis.llen(f"{key}:ran") >= len(ids), 120, what="every job run")
        wait_for(lambda: not queue.started_job_registry.get_job_ids(), 60, what="all ended")
    finally:
        stop_workers(procs)
    ran = [raw.decode() for raw in redis.lrange(f"{key}:ran", 0, -1)]
    assert sorted(ran) == sorted(ids)  # each once: none twice, none lost
    for inst in ("a", "b", "c"):
        assert int(redis.get(f"{key}:max:{inst}")) == 1
    assert redis.zcard(SLOTS) == 0  # every slot given back


def test_a_killed_workers_slot_frees_itself_when_its_lease_ends(redis, redis_url, queue):
    key = "crash-test"
    redis.set(f"{key}:sleep", 600)  # the first job runs until its worker is killed
    first = light(queue, "a", key, 1)
    # A short lease, renewed by the heartbeat every second while its worker lives.
    crashing = start_worker(redis_url, limit=1, lease=3, monitoring=1)
    try:
        wait_for(lambda: redis.llen(f"{key}:ran") == 1, 60, what="the first job running")
        second = light(queue, "a", key, 2)
        # Renewed past several leases: the slot stays held, the second job waits.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert running(redis, "a") == 1
            assert queue.job_ids == [second]
            time.sleep(0.5)
    finally:
        stop_workers([crashing])  # worker and horse, SIGKILLed: no cleanup of theirs runs
    redis.set(f"{key}:sleep", 0.05)
    survivor = start_worker(redis_url, limit=1, lease=3, monitoring=1)
    try:
        wait_for(lambda: redis.llen(f"{key}:ran") == 2, 60, what="the second job after the lease")
    finally:
        stop_workers([survivor])
    assert [raw.decode() for raw in redis.lrange(f"{key}:ran", 0, -1)] == [first, second]


# -- the queued comment, the stop, crash recovery (GitHub stand-in) ----------------------


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        for installation, repo in ((A, REPO_A), (B, REPO_B)):
            gh.add_installation(installation, repo.split("/")[0])
            gh.add_repo(repo, installation, files={"README.md": "# x\n"})
        gh.add_user("octocat", 583231)
        for n in range(1, 20):
            gh.add_issue(REPO_A, n, f"Task {n}", "Please.", "octocat", 583231)
        yield gh


@pytest.fixture
def settings(github, redis_url, tmp_path) -> WorkerSettings:
    return WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
        REDIS_URL=redis_url,
        WORKSPACE_ROOT=str(tmp_path / "workspaces"),
        MAX_SESSIONS_PER_INSTALLATION="1",
    )


def comments_of(github, number: int) -> list:
    return [c for c in github.comments if c.full_name == REPO_A and c.issue_number == number]


def test_a_waiting_session_is_told_it_is_queued_and_why_then_takes_that_comment(
    github, redis, queue, settings
):
    ids = burst(redis, A, 2)
    fair = Fairness(limit=1)
    pick(redis, queue, fair)
    waiting = pick(redis, queue, fair).waiting
    assert waiting == [(ids[1], 1)]
    assert announce(settings, redis, ids[1], why(1, 1)) == "posted"
    (comment,) = comments_of(github, 2)
    assert "⏳ **Queued**" in comment.body
    assert "1 session of this installation is running, and its limit is 1" in comment.body
    assert marker(ids[1], "queued") in comment.body
    assert "task 2" in comment.body  # the request, quoted as on every tracking comment
    # Once only: a second announcement posts nothing.
    assert announce(settings, redis, ids[1], why(1, 1)) == "started"
    assert len(comments_of(github, 2)) == 1
    # At its start the session edits that comment instead of posting another.
    taken_id, url = queued.take(redis, ids[1], request(A, 2).thread)
    assert taken_id == comment.id and url.endswith(f"#issuecomment-{comment.id}")
    assert queued.take(redis, ids[1], request(A, 2).thread, wait=0) is None


def test_a_session_that_started_first_is_never_announced(github, redis, settings):
    (session,) = burst(redis, A, 1, start=3)
    assert queued.take(redis, session, request(A, 3).thread, wait=0) is None
    assert announce(settings, redis, session, why(1, 1)) == "started"
    assert comments_of(github, 3) == []


def test_stop_finds_a_queued_session_and_the_pick_takes_it_at_once(github, redis, queue, settings):
    ids = burst(redis, A, 2, start=5)
    fair = Fairness(limit=1)
    pick(redis, queue, fair)
    assert pick(redis, queue, fair).job_id is None
    announce(settings, redis, ids[1], why(1, 1))

    async def stop():
        kw = redis.connection_pool.connection_kwargs
        async with AsyncRedis(host=kw["host"], port=kw["port"], db=kw.get("db", 0)) as client:
            return await request_stop(client, request(A, 6, Mode.STOP))

    assert asyncio.run(stop()) == ids[1]
    assert redis.lrange(stop_requests_key(ids[1]), 0, -1) == [b"octocat"]
    assert pick(redis, queue, fair).job_id == ids[1]


def test_crash_recovery_ends_a_queued_comment_and_frees_the_slot(github, redis, queue, settings):
    ids = burst(redis, A, 2, start=7)
    fair = Fairness(limit=1)
    assert pick(redis, queue, fair).job_id == ids[0]
    pick(redis, queue, fair)
    announce(settings, redis, ids[1], why(1, 1))
    # The first one's worker died: whoever ends its comment gives its slot back at once.
    first = Job.fetch(ids[0], connection=redis, serializer=JSONSerializer)
    interrupt_job(first, redis, "the worker stopped", settings)
    assert running(redis, A) == 0
    # A queued comment is ended like a working one, should its session never start.
    second = Job.fetch(ids[1], connection=redis, serializer=JSONSerializer)
    assert interrupt_job(second, redis, "the worker stopped", settings) == "edited"
    (comment,) = comments_of(github, 8)
    assert marker(ids[1], "failed") in comment.body


def backdate(redis: Redis, session_id: str, seconds: float) -> None:
    """The job as if queued `seconds` ago (RQ's own field), so no test waits for the clock."""
    job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
    job.enqueued_at = now() - timedelta(seconds=seconds)
    job.save()


def test_sessions_left_waiting_for_a_busy_worker_are_told_once_why(github, redis, queue, settings):
    ids = burst(redis, A, 2, start=11)
    (stop,) = [enqueue(redis, request(A, 19, Mode.STOP)).session_id]
    # Fresh requests are not overdue yet; nor does a stop ever get a queued comment.
    assert overdue(settings, redis, queue) == []
    for session_id in (*ids, stop):
        backdate(redis, session_id, BUSY_AFTER + 1)
    assert overdue(settings, redis, queue) == [
        (ids[0], why_busy(0, 0)),
        (ids[1], why_busy(0, 1)),
    ]
    assert overdue(settings, redis, queue) == []  # each is told once, by one announcer
    # With a worker registered on the queue (busy, since the jobs are still queued).
    worker = FairWorker([queue], connection=redis)
    worker.register_birth()
    try:
        (third,) = burst(redis, A, 1, start=13)
        backdate(redis, third, BUSY_AFTER + 1)
        assert overdue(settings, redis, queue) == [(third, why_busy(1, 3))]
        # An installation at its limit: that is the reason given, not the workers.
        (fourth,) = burst(redis, A, 1, start=14)
        backdate(redis, fourth, BUSY_AFTER + 1)
        redis.zadd(SLOTS, {f"{A}/running-one": time.time() + 60})
        assert overdue(settings, redis, queue) == [(fourth, why(1, 1))]
    finally:
        worker.register_death()
    assert announce(settings, redis, ids[1], why_busy(1, 1)) == "posted"
    (comment,) = comments_of(github, 12)
    assert "⏳ **Queued**: the one worker is busy with other sessions, and 1 request is" in (
        comment.body
    )
    assert marker(ids[1], "queued") in comment.body


def test_the_announcers_thread_tells_a_session_left_waiting(github, redis, queue, settings):
    (session,) = burst(redis, A, 1, start=16)
    backdate(redis, session, BUSY_AFTER + 1)
    Announcer(settings).start()
    wait_for(lambda: comments_of(github, 16), 60, what="the queued comment")
    (comment,) = comments_of(github, 16)
    assert "no worker is running, and 0 requests are ahead" in comment.body
    assert marker(session, "queued") in comment.body
