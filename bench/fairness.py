#!/usr/bin/env python3
"""Fair sharing: where another installation's request starts behind one installation's burst.

    .venv/bin/python -m bench.fairness                      # 50 + 1 jobs, 4 workers, 3 rounds
    .venv/bin/python -m bench.fairness --burst 200 --workers 8 --limit 4

Each round, in the same run and on the same Redis (its own `redis-server`), for both orders:

* fair: `FairWorker` processes (jobs/common/fairness.py: the fair pick and the per-installation
  limit, MAX_SESSIONS_PER_INSTALLATION = `--limit`), the worker's real dequeue path;
* baseline: RQ's plain `Worker` processes: the queue's FIFO order, as before fair sharing.

`--workers` worker processes wait on an empty queue; installation A's burst of `--burst` jobs
is queued, and once every worker has started one of them, installation B's single job. Each job
is a light stand-in for a session (it sleeps `--job-seconds`); a job starts when a worker takes
it. Reported: B's position in the order jobs started (1 = first), and how many of A's jobs
started after B was queued and before B started (the target: at most one, "within one session
slot"); the ratio baseline/fair of B's position. Then the pick's own cost: one fair pick against
RQ's LMOVE, with `--scan` jobs queued.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from jobs.common.fairness import SLOTS, Fairness, FairWorker, pick, release
from tests.support import ROOT, RedisServer

QUEUE = "sessions"
STARTS = "bench:starts"  # list of "job id|time" in the order workers took them
JOB = "bench.fairness.light_job"  # by name: run as `-m`, this module is __main__


def light_job(seconds: float) -> None:
    time.sleep(seconds)


class Recording:
    """Records each job as the worker takes it, before its horse forks: the order of the picks,
    not of the horses' start-up, which a loaded machine reorders."""

    def execute_job(self, job, queue) -> None:
        self.connection.rpush(STARTS, f"{job.id}|{time.time()}")
        super().execute_job(job, queue)


class FairBench(Recording, FairWorker):
    pass


class PlainBench(Recording, Worker):
    pass


def run_worker(redis_url: str, mode: str, limit: int) -> None:
    redis = Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    if mode == "fair":
        worker: Worker = FairBench(
            [queue], connection=redis, serializer=JSONSerializer, fairness=Fairness(limit=limit)
        )
    else:
        worker = PlainBench([queue], connection=redis, serializer=JSONSerializer)
    worker.work(logging_level="WARNING")


def one_round(redis_url: str, mode: str, args) -> tuple[int, int]:
    """(B's start position, A's starts between B's arrival and B's start)."""
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    code = (
        f"from bench.fairness import run_worker; run_worker({redis_url!r}, {mode!r}, {args.limit})"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(args.workers)
    ]
    try:
        while len(Worker.all(connection=redis)) < args.workers:
            time.sleep(0.1)
        time.sleep(0.5)  # every worker past its start, waiting on the queue
        with redis.pipeline() as pipe:
            for n in range(args.burst):
                queue.enqueue(
                    JOB,
                    args.job_seconds,
                    job_id=f"a-{n}",
                    meta={"installation": "A"},
                    pipeline=pipe,
                )
            pipe.execute()
        # The burst holds every worker before B comes: what B would otherwise queue behind.
        while redis.llen(STARTS) < args.workers:
            time.sleep(0.01)
        queue.enqueue(JOB, args.job_seconds, job_id="b-0", meta={"installation": "B"})
        b_queued = time.time()  # once it is in the queue, for any worker to see
        total = args.burst + 1
        deadline = time.monotonic() + 60 + total * args.job_seconds * 2
        while redis.llen(STARTS) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: only {redis.llen(STARTS)} of {total} jobs started")
            time.sleep(0.1)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(30)
    starts = [raw.decode().split("|") for raw in redis.lrange(STARTS, 0, -1)]
    ids = [job_id for job_id, _ in starts]
    position = ids.index("b-0") + 1
    b_started = float(starts[position - 1][1])
    between = sum(
        1 for job_id, at in starts if job_id != "b-0" and b_queued < float(at) < b_started
    )
    return position, between


def pick_cost(redis_url: str, scan: int, rounds: int = 200) -> tuple[float, float]:
    """Seconds per fair pick and per RQ LMOVE, with `scan` jobs of two installations queued."""
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    with redis.pipeline() as pipe:
        for n in range(scan + rounds):
            inst = "A" if n % 10 else "B"
            queue.enqueue(JOB, 0, job_id=f"p-{n}", meta={"installation": inst}, pipeline=pipe)
        pipe.execute()
    fair = Fairness(limit=0, scan=scan)
    began = time.perf_counter()
    for _ in range(rounds):
        picked = pick(redis, queue, fair).job_id
        release(redis, "A" if picked and not picked.endswith("0") else "B", picked or "")
    fair_s = (time.perf_counter() - began) / rounds
    redis.delete(SLOTS)
    began = time.perf_counter()
    for _ in range(rounds):
        redis.lmove(queue.key, queue.intermediate_queue_key)
    return fair_s, (time.perf_counter() - began) / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scan", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            url = server.url
            results: dict[str, list[tuple[int, int]]] = {"fair": [], "baseline": []}
            for _ in range(args.rounds):
                for mode in ("baseline", "fair"):
                    results[mode].append(one_round(url, mode, args))
            fair_s, lmove_s = pick_cost(url, args.scan)
        finally:
            server.stop()
    print(
        f"{args.burst} jobs of installation A, then 1 of B; {args.workers} workers, "
        f"limit {args.limit}, {args.job_seconds} s per job, {args.rounds} rounds"
    )
    medians = {}
    for mode in ("baseline", "fair"):
        positions = [p for p, _ in results[mode]]
        betweens = [b for _, b in results[mode]]
        medians[mode] = statistics.median(positions)
        print(
            f"  {mode:8}  B started at position {positions} (median {medians[mode]:g}); "
            f"A's starts between B's arrival and B's start: {betweens}"
        )
    print(f"  ratio baseline/fair of B's position: {medians['baseline'] / medians['fair']:.1f}x")
    print(
        f"pick cost with {args.scan} queued: fair pick {fair_s * 1e6:.0f} us, RQ LMOVE "
        f"{lmove_s * 1e6:.0f} us ({fair_s / lmove_s:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
