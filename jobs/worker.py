"""The worker process: an RQ worker on the sessions queue (`python -m jobs.worker`).

It checks its configuration first, so a missing variable is one line at start-up rather than a
failure inside the first session, and it uses RQ's JSON serializer: the queue carries only plain
values, and nothing in Redis is ever unpickled.

Crashes and shutdowns (see jobs/upkeep/reaper.py and jobs/upkeep/interrupted.py):

* At start and every `REAPER_INTERVAL` seconds while idle, RQ's maintenance cleans its registries
  (abandoned jobs get their failure callback) and the reaper removes the containers and
  workspaces of sessions not running on a live worker, ending their tracking comments.
* SIGTERM (or SIGINT) is RQ's warm shutdown: the running session finishes, then the worker
  exits. A second one is RQ's cold shutdown: the horse is SIGKILLed; this worker then removes
  that session's container and workspace, fails its job and ends its comment before exiting.
* A horse that dies on its own (the OOM killer, RQ's hard timeout) is cleaned up the same way.
* A whole worker host lost (docs/hosts.md): its sessions' heartbeats lapse, and after
  `JOB_MONITORING_INTERVAL` + 60 s the next maintenance pass of a worker on another host finds
  them abandoned and ends their comments; the lost host's own reaper removes its containers and
  workspaces when it comes back (no other host's reaper touches them).

Warm sandboxes (jobs/sandbox/pool.py): a thread of this process keeps the host's pool filled
while the horses claim from it; each maintenance pass also tops it up (and drains it when
SANDBOX_POOL_SIZE is 0), and the worker's end drains its idle slots.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import docker
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.common import metrics
from jobs.common.endpoint import serve_endpoint
from jobs.common.fairness import Fairness, FairWorker
from jobs.common.logs import configure_logging
from jobs.common.queue import ON_FAILURE, ON_STOPPED, RUN_SESSION, session_queue
from jobs.common.redact import redactor
from jobs.common.settings import (
    CONFIG_ERROR_EXIT,
    ConfigError,
    WorkerSettings,
    settings_at_start,
)
from jobs.sandbox.host import HostUnknown, worker_host
from jobs.sandbox.pool import PoolKeeper
from jobs.upkeep.announce import Announcer
from jobs.upkeep.interrupted import HORSE_KILLED, WORKER_STOPPED, interrupt_job
from jobs.upkeep.leftovers import (
    HORSE_FIELD,
    HOST_FIELD,
    PID_FIELD,
    WORKER_HOST_FIELD,
    host_identity,
    process_token,
    reap_session,
)
from jobs.upkeep.reaper import reap
from jobs.upkeep.redelivery import SWEEP_JOB, schedule_sweep

log = logging.getLogger(__name__)


# What this worker runs: its own job functions and callbacks. Redis is an attack surface (anyone
# who can write to it can queue a job); a job naming anything else is refused before its name is
# ever imported.
JOB_FUNCTIONS = frozenset({RUN_SESSION, SWEEP_JOB})
JOB_CALLBACKS = frozenset({ON_FAILURE.name, ON_STOPPED.name})


class RefusedJob(RuntimeError):
    """A job on the queue names a function or callback that is not one of ours."""


def job_refusal(job: Job) -> str:
    """Why `job` must not run ('' when it may), read from its names alone: nothing imported."""
    try:
        func = job.func_name
    except Exception as exc:  # undecodable data: refused, not raised into the work loop
        return f"its data cannot be read ({type(exc).__name__})"
    if func not in JOB_FUNCTIONS:
        return f"it names {func!r}, which is not one of this worker's job functions"
    for kind in ("success", "failure", "stopped"):
        name = getattr(job, f"_{kind}_callback_name", None)
        if name and name not in JOB_CALLBACKS:
            return f"its {kind} callback {name!r} is not one of this worker's"
    return ""


class SessionJob(Job):
    """A job that imports its function or callbacks only when they are this worker's own.

    The worker checks each job before it runs; this guards the other ways RQ reaches a job's
    names (registry cleanups run failure callbacks of abandoned jobs, for one).
    """

    @property
    def func(self):
        if reason := job_refusal(self):
            raise RefusedJob(reason)
        return super().func

    @property
    def success_callback(self):
        return None if job_refusal(self) else super().success_callback

    @property
    def failure_callback(self):
        return None if job_refusal(self) else super().failure_callback

    @property
    def stopped_callback(self):
        return None if job_refusal(self) else super().stopped_callback


class SessionWorker(FairWorker):
    """An RQ forking worker that also sweeps deliveries and reaps crashed sessions' leftovers.

    It takes its sessions by the fair pick (jobs/common/fairness.py): at most
    MAX_SESSIONS_PER_INSTALLATION of one installation at once, the installation with the fewest
    running first; a session found waiting for a slot is told so on its thread by this worker's
    announcer (jobs/upkeep/announce.py).

    RQ runs maintenance at start and then every `maintenance_interval` seconds, but only between
    jobs, when its blocking dequeue wakes up (every `worker_ttl - 15` s): the worker's TTL is
    set so that the dequeue wakes once per interval. The sweep's job id names its ten-minute
    slot, so any number of workers book one sweep per slot.
    """

    def __init__(
        self,
        *args,
        settings: WorkerSettings | None = None,
        reaper_interval: int = 60,
        docker_client=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("job_class", SessionJob)
        kwargs.setdefault("maintenance_interval", reaper_interval)
        kwargs.setdefault("worker_ttl", reaper_interval + 16)
        if settings is not None:
            # A slot lapses when RQ would find its session abandoned: no heartbeat for this long.
            kwargs.setdefault(
                "fairness",
                Fairness(
                    limit=settings.max_sessions_per_installation,
                    lease=settings.job_monitoring_interval + 60,
                ),
            )
        super().__init__(*args, **kwargs)
        for queue in self.queues:  # their registries' cleanups fetch jobs as SessionJob too
            queue.job_class = self.job_class
        self.settings = settings
        self._docker = docker_client
        self.pool_keeper: PoolKeeper | None = None
        self.announcer = Announcer(settings) if settings is not None else None

    @property
    def docker(self):
        if self._docker is None:
            try:
                self._docker = docker.from_env()
            except Exception as exc:  # the engine is away: reap workspaces only, retry later
                log.warning("reaper: no Docker engine (%s)", type(exc).__name__)
        return self._docker

    # -- who this worker is, for other workers' reapers ---------------------------------

    def register_birth(self) -> None:
        super().register_birth()
        fields = {HOST_FIELD: host_identity(), PID_FIELD: process_token(self.pid)}
        if self.settings is not None and self.settings.worker_host_id:
            fields[WORKER_HOST_FIELD] = self.settings.worker_host_id  # for operators
        self.connection.hset(self.key, mapping=fields)

    def sessions_waiting(self, waiting: list[tuple[str, int]]) -> None:
        if self.announcer is not None:
            self.announcer.put(waiting)

    def refuse(self, job: Job, queue, reason: str) -> None:
        """Fail a foreign job where an operator sees it, running none of its callbacks."""
        log.error("refused job %s from queue %s: %s", job.id, queue.name, reason)
        with self.connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            # RQ's own record of a failure (the failed registry and a result), minus callbacks.
            job._handle_failure(f"refused: {reason}", pipe, worker_name=self.name)
            pipe.execute()

    def fork_work_horse(self, job, queue) -> None:
        super().fork_work_horse(job, queue)  # only the parent returns
        self.connection.hset(self.key, HORSE_FIELD, process_token(self.horse_pid))

    # -- maintenance --------------------------------------------------------------------

    def run_maintenance_tasks(self) -> None:
        with _redis_away("maintenance"):
            super().run_maintenance_tasks()
        schedule_sweep(self.queues[0])
        if self.settings is not None:
            try:
                reap(self.settings, self.connection, self.docker)
            except Exception:
                log.exception("reaper: the pass failed")
            if self.announcer is not None:
                self.announcer.start()  # its look for sessions left waiting for a worker
            if self.pool_keeper is None:
                self.pool_keeper = PoolKeeper(self.settings)
                if self.settings.sandbox_pool_size:
                    self.pool_keeper.start()
            self.pool_keeper.tick()  # while the engine is unreachable, said once in the log

    def teardown(self) -> None:
        if self.pool_keeper is not None and not self.is_horse:
            self.pool_keeper.stop()
        super().teardown()

    # -- Redis away ---------------------------------------------------------------------
    # RQ quits the worker on any Redis error outside its dequeue (which retries with a
    # backoff): a failed heartbeat mid-session, a job ending while Redis is down, a maintenance
    # pass. Then the running session goes unwatched and nothing serves the queue. Here each of
    # those is skipped while Redis is away; the loop comes back to the dequeue, which waits for
    # Redis. What lapsed meanwhile (heartbeats, a result not recorded) is settled by RQ's
    # registry cleanup and the reaper once Redis is back; a final comment is never overwritten.

    def execute_job(self, job, queue) -> None:
        try:
            with _redis_away(f"recording the end of {job.id}"):
                if reason := job_refusal(job):
                    self.refuse(job, queue, reason)
                    return
                super().execute_job(job, queue)
        finally:
            metrics.horse_ended()  # the next horse starts with no sandbox counted

    def maintain_heartbeats(self, job) -> None:
        with _redis_away("heartbeat"):
            super().maintain_heartbeats(job)

    def heartbeat(self, *args, **kwargs) -> None:
        with _redis_away("heartbeat"):
            super().heartbeat(*args, **kwargs)

    def set_current_job_working_time(self, *args, **kwargs) -> None:
        with _redis_away("working time"):
            super().set_current_job_working_time(*args, **kwargs)

    def set_state(self, *args, **kwargs) -> None:
        with _redis_away("worker state"):
            super().set_state(*args, **kwargs)

    def check_for_suspension(self, *args, **kwargs) -> None:
        with _redis_away("suspension check"):
            super().check_for_suspension(*args, **kwargs)

    # -- a horse that died without its `finally` ----------------------------------------

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self._after_horse_died(job.id, HORSE_KILLED)

    def request_stop(self, signum, frame) -> None:
        if self.settings is None or self.settings.worker_shutdown == "warm" or not self.horse_pid:
            super().request_stop(signum, frame)
            return
        # WORKER_SHUTDOWN=cold: what RQ does at a second signal, at the first, since a container
        # engine sends only one before its SIGKILL.
        job_id = self.get_current_job_id()
        log.warning("worker %s: cold shutdown at the first signal", self.name)
        self.kill_horse()
        self.wait_for_horse()
        if job_id:
            self._after_horse_died(job_id, WORKER_STOPPED, fail_job=True)
        raise SystemExit

    def request_force_stop(self, signum, frame) -> None:
        job_id = self.get_current_job_id() if self.horse_pid else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            if job_id:
                self._after_horse_died(job_id, WORKER_STOPPED, fail_job=True)
            raise

    def _after_horse_died(self, job_id: str, why: str, fail_job: bool = False) -> None:
        if self.settings is None:
            return
        try:
            reap_session(self.settings, self.docker, job_id)
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            if fail_job:
                # What RQ would do once the heartbeat lapsed, now (and without the callback).
                queue = next((q for q in self.queues if q.name == job.origin), self.queues[0])
                self.handle_job_failure(job, queue, exc_string=f"Cold shutdown: {why}")
            interrupt_job(job, self.connection, why, self.settings)
        except Exception:
            log.exception("session %s: cleanup after its horse died", job_id)


@contextlib.contextmanager
def _redis_away(what: str):
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning(
            "Redis unreachable (%s); %s skipped, the session goes on", type(exc).__name__, what
        )


def docker_ping() -> None:
    client = docker.from_env(timeout=5)
    try:
        client.ping()
    finally:
        client.close()


def main() -> int:
    # Before anything is counted: the horses' metrics files, summed by this worker's endpoint.
    metrics.prepare("worker", forks_horses=True)
    try:
        return work()
    finally:
        metrics.discard()


def work() -> int:
    settings = settings_at_start(WorkerSettings)
    if settings is None:
        return CONFIG_ERROR_EXIT
    configure_logging(redactor.learn(settings), log_format=settings.log_format)
    redis = Redis.from_url(settings.redis_url)
    if settings.metrics_port is not None:
        # Ready: sessions can run, which takes Redis (the queue) and Docker (the sandboxes).
        checks = {"redis": redis.ping, "docker": docker_ping}
        try:
            serve_endpoint(settings.metrics_host, settings.metrics_port, checks)
        except ConfigError as exc:
            print(f"configuration: {exc}", file=sys.stderr, flush=True)
            return CONFIG_ERROR_EXIT
    try:
        # Once, for every pass of the reaper and (inherited) every session's horse.
        settings.worker_host_id = worker_host(settings)
    except HostUnknown as exc:  # asked again at each reaper pass and session
        log.warning("worker host: %s", exc)
    worker = SessionWorker(
        [session_queue(redis, settings.queue_name)],
        connection=redis,
        serializer=JSONSerializer,
        settings=settings,
        reaper_interval=settings.reaper_interval,
        job_monitoring_interval=settings.job_monitoring_interval,
    )
    log.info(
        "worker host %s; reaper: every %s s while idle, and now; heartbeat every %s s",
        settings.worker_host_id or "unknown",
        settings.reaper_interval,
        settings.job_monitoring_interval,
    )
    worker.work(with_scheduler=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
