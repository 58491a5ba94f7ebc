"""The reaper and the interrupted comment, on a real Redis, real RQ jobs and the GitHub stand-in.

Docker is a small in-memory double here (the e2e tests in tests/e2e/test_crashes.py use the real
engine); everything RQ does (job hashes, registries, the abandoned-job callback) is RQ's own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException, ImageNotFound
from redis import Redis
from rq import Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from jobs.common.queue import active_key, session_queue
from jobs.common.request import SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.checks import CheckRun
from jobs.github.client import ISSUE_SESSION_PERMISSIONS, RepoSession
from jobs.github.tracking import marker
from jobs.sandbox.container import LABEL
from jobs.sandbox.host import HOST_FILE, HOST_LABEL
from jobs.sandbox.workspace import OWNER_FILE
from jobs.upkeep import interrupted
from jobs.upkeep.interrupted import (
    PENDING,
    WORKER_STOPPED,
    headline,
    interrupt_job,
    on_failure,
    retry_pending,
)
from jobs.upkeep.leftovers import (
    HORSE_FIELD,
    HOST_FIELD,
    PID_FIELD,
    process_token,
    reap_session,
    token_alive,
    worker_alive,
)
from jobs.upkeep.reaper import kill_runsc_orphans, reap, runsc_processes
from tests.standins.github import GitHubStandIn
from tests.standins.github_pulls import NewPull
from tests.support import dead_redis, enqueue

REPO = "octo-org/reaped"
INSTALLATION = 91
HERE = "test-host|boot|pid:[1]"
HOST_ID = "test-host"  # the in-memory engine double has no `docker info`


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, "octo-org")
        gh.add_repo(REPO, INSTALLATION, files={"README.md": "# reaped\n"})
        gh.add_user("octocat", 583231)
        yield gh


@pytest.fixture
def settings(github, redis_url, tmp_path):
    return WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
        REDIS_URL=redis_url,
        WORKSPACE_ROOT=str(tmp_path / "workspaces"),
        WORKER_HOST_ID=HOST_ID,
    )


@pytest.fixture
def redis(redis_url):
    return Redis.from_url(redis_url)


@pytest.fixture(autouse=True)
def reset_env(monkeypatch, github, redis_url, tmp_path):
    # The callbacks load settings from the environment, as they do in a worker.
    for name, value in {
        "GITHUB_APP_ID": str(github.app_id),
        "GITHUB_PRIVATE_KEY": github.private_key_pem,
        "GITHUB_API_URL": github.api_url,
        "REDIS_URL": redis_url,
        "WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        "WORKER_HOST_ID": HOST_ID,
    }.items():
        monkeypatch.setenv(name, value)


IMAGE = os.environ.get("AGENT_IMAGE", "claudecluster/agent:latest")


# -- doubles and helpers ----------------------------------------------------------------


class FakeContainer:
    def __init__(self, engine, session_id: str, age: float = 5.0) -> None:
        created = datetime.now(UTC) - timedelta(seconds=age)
        self.engine = engine
        self.id = os.urandom(32).hex()
        self.labels = {LABEL: session_id, "claudecluster.role": "sandbox"}
        self.attrs = {"Created": created.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")}

    def remove(self, force: bool = False) -> None:
        assert force
        self.engine.items.remove(self)
        self.engine.removed.append(self.labels[LABEL])


class FakeDocker:
    def __init__(self) -> None:
        self.items: list[FakeContainer] = []
        self.removed: list[str] = []
        self.containers = self

    def add(self, session_id: str, age: float = 5.0) -> FakeContainer:
        container = FakeContainer(self, session_id, age)
        self.items.append(container)
        return container

    def list(self, all: bool = False, filters: dict | None = None, ignore_removed: bool = False):
        wanted = (filters or {}).get("label")
        if not wanted:
            return list(self.items)
        key, _, value = wanted.partition("=")
        return [c for c in self.items if key in c.labels and (not value or c.labels[key] == value)]

    def ids(self) -> list[str]:
        return [c.labels[LABEL] for c in self.items]


def new_session(github, redis, instruction: str = "fix the bug", **extra) -> tuple[Job, int]:
    """A queued session as the web process queues it, on a fresh issue of the stand-in."""
    # Issues and pull requests share one sequence of numbers, as on GitHub.
    number = 1 + max([0, *(i.number for i in github.issues), *(p.number for p in github.pulls)])
    github.add_issue(REPO, number, f"Issue {number}", "body", "octocat", 583231)
    request = SessionRequest(
        delivery_id=f"d-{number}-{os.urandom(4).hex()}",
        installation_id=INSTALLATION,
        repo=REPO,
        number=number,
        requester="octocat",
        requester_id=583231,
        instruction=instruction,
        **extra,
    )
    queued = enqueue(redis, request)
    return Job.fetch(queued.session_id, connection=redis, serializer="json"), number


def start(
    redis,
    job: Job,
    worker: str = "w-1",
    host: str = HERE,
    pid_token: str = "",
    current: str | None = None,
    alive_key: bool = True,
) -> None:
    """What RQ writes when worker `worker` starts `job`, and the SessionWorker's own fields."""
    job.set_status(JobStatus.STARTED)
    redis.hset(job.key, "worker_name", worker)
    if alive_key:
        fields = {"name": worker, "current_job": current or job.id, "pid": "1"}
        fields.update({HOST_FIELD: host, PID_FIELD: pid_token or dead_token()})
        redis.hset(Worker.redis_worker_namespace_prefix + worker, mapping=fields)
        redis.expire(Worker.redis_worker_namespace_prefix + worker, 90)


def dead_token() -> str:
    proc = subprocess.Popen(["true"])
    token = process_token(proc.pid)
    proc.wait()
    return token


def post_tracking(settings, github, number: int, session_id: str, state: str = "working") -> int:
    gh = RepoSession(settings, INSTALLATION, REPO, ISSUE_SESSION_PERMISSIONS)
    body = f"👀 **Claude is working on this…**\n\n{marker(session_id, state)}"
    return gh.comment(number, body)["id"]


def workspace(settings, session_id: str) -> Path:
    """A workspace as jobs/sandbox/workspace.py makes it: `s-<random>/`, the owner in a file."""
    path = settings.workspace_root / f"s-{os.urandom(4).hex()}"
    (path / "control").mkdir(parents=True)
    (path / OWNER_FILE).write_text(session_id)
    (path / "control" / "gateway.sock").write_text("")  # stands for the socket file
    (path / "tree").mkdir()
    return path


def comment_body(github, comment_id: int) -> str:
    return next(c.body for c in github.comments if c.id == comment_id)


def edits_of(github, comment_id: int) -> int:
    path = f"/issues/comments/{comment_id}"
    return sum(1 for r in github.requests if r.method == "PATCH" and r.path.endswith(path))


# -- the reaper ---------------------------------------------------------------------------


def test_a_dead_workers_session_loses_its_container_workspace_and_working_comment(
    github, redis, settings
):
    job, number = new_session(github, redis)
    start(redis, job)  # on this host, but its process is gone
    engine = FakeDocker()
    engine.add(job.id)
    path = workspace(settings, job.id)
    comment = post_tracking(settings, github, number, job.id)
    redis.set(active_key(f"{REPO}#{number}"), job.id)

    report = reap(settings, redis, engine, here=HERE)

    assert engine.ids() == [] and not path.exists()
    assert report.containers == [job.id] and report.workspaces == [str(path)]
    assert report.interrupted == [job.id] and report.live == []
    body = comment_body(github, comment)
    assert headline(WORKER_STOPPED) in body
    assert "comment `/claude …` again to retry" in body
    assert marker(job.id, "failed") in body and "state=working" not in body
    assert "> fix the bug" in body
    # The retry the comment asks for need not wait for the thread's mark to expire.
    assert redis.get(active_key(f"{REPO}#{number}")) is None
    # The edit's token was minted for this repository alone, and revoked.
    mint = github.token_requests[-1]
    assert mint.body["repositories"] == ["reaped"]
    assert github.token_info(mint.token).revoked


def test_another_hosts_leftovers_are_left_to_that_hosts_reaper_even_in_a_shared_root(
    github, redis, settings
):
    # Host "other-host" shares this workspace root (and, here, the engine); its session is dead.
    job, _ = new_session(github, redis)
    start(redis, job)
    engine = FakeDocker()
    engine.add(job.id).labels[HOST_LABEL] = "other-host"
    path = workspace(settings, job.id)
    (path / HOST_FILE).write_text("other-host")
    ended: list[str] = []

    report = reap(settings, redis, engine, here=HERE, interrupt=lambda j, why: ended.append(j.id))
    assert engine.ids() == [job.id] and path.exists() and not ended
    assert not (report.containers or report.workspaces or report.live or report.unknown)
    # The abandoned-job path (RQ's cleanup calls on_failure, which reaps) leaves them too.
    assert not reap_session(settings, engine, job.id).removed
    assert engine.ids() == [job.id] and path.exists()

    theirs = settings.model_copy(update={"worker_host_id": "other-host"})
    report = reap(theirs, redis, engine, here=HERE, interrupt=lambda j, why: ended.append(j.id))
    assert engine.ids() == [] and not path.exists() and ended == [job.id]
    assert report.containers == [job.id]


def test_a_live_sessions_container_is_never_reaped(github, redis, settings):
    job, number = new_session(github, redis)
    start(redis, job, pid_token=process_token(os.getpid()))  # this very process: alive
    engine = FakeDocker()
    engine.add(job.id)
    path = workspace(settings, job.id)
    comment = post_tracking(settings, github, number, job.id)

    for _ in range(3):
        report = reap(settings, redis, engine, here=HERE)
        assert report.live == [job.id] and not report.removed

    assert engine.ids() == [job.id] and path.exists()
    assert marker(job.id, "working") in comment_body(github, comment)
    assert edits_of(github, comment) == 0


def test_a_live_horse_keeps_its_session_even_when_its_worker_process_is_gone(
    github, redis, settings
):
    job, _ = new_session(github, redis)
    start(redis, job)
    redis.hset(
        Worker.redis_worker_namespace_prefix + "w-1", HORSE_FIELD, process_token(os.getpid())
    )
    engine = FakeDocker()
    engine.add(job.id)
    assert reap(settings, redis, engine, here=HERE).live == [job.id]


def test_a_worker_on_another_host_counts_as_alive_until_its_heartbeat_key_expires(
    github, redis, settings
):
    job, _ = new_session(github, redis)
    start(redis, job, host="elsewhere|boot|pid:[9]")
    engine = FakeDocker()
    engine.add(job.id)
    assert reap(settings, redis, engine, here=HERE).live == [job.id]
    assert engine.ids() == [job.id]

    redis.delete(Worker.redis_worker_namespace_prefix + "w-1")  # the key's TTL ran out
    report = reap(settings, redis, engine, here=HERE)
    assert report.containers == [job.id] and engine.ids() == []


def test_a_worker_that_registered_its_death_or_moved_on_holds_nothing(github, redis, settings):
    dead, _ = new_session(github, redis)
    start(redis, dead, worker="w-dead", pid_token=process_token(os.getpid()))
    redis.hset(Worker.redis_worker_namespace_prefix + "w-dead", "death", "2026-01-01T00:00:00Z")
    moved, _ = new_session(github, redis)
    start(
        redis,
        moved,
        worker="w-moved",
        pid_token=process_token(os.getpid()),
        current="session-something-else",
    )
    engine = FakeDocker()
    engine.add(dead.id)
    engine.add(moved.id)

    report = reap(settings, redis, engine, here=HERE, interrupt=lambda job, why: "edited")
    assert sorted(report.containers) == sorted([dead.id, moved.id]) and engine.ids() == []


def test_leftovers_of_finished_and_failed_jobs_go_and_only_failed_ones_are_interrupted(
    github, redis, settings
):
    finished, _ = new_session(github, redis)
    finished.set_status(JobStatus.FINISHED)
    failed, _ = new_session(github, redis)
    failed.set_status(JobStatus.FAILED)
    queued, _ = new_session(github, redis)  # an earlier attempt's leftovers
    engine = FakeDocker()
    for job in (finished, failed, queued):
        engine.add(job.id)
        workspace(settings, job.id)
    asked = []

    report = reap(
        settings,
        redis,
        engine,
        here=HERE,
        interrupt=lambda job, why: asked.append(job.id) or "edited",
    )

    assert engine.ids() == [] and list(settings.workspace_root.iterdir()) == []
    assert len(report.containers) == 3 and len(report.workspaces) == 3
    assert asked == [failed.id]


def test_sessions_this_redis_does_not_know_are_left_alone_unless_old(redis, settings):
    engine = FakeDocker()
    engine.add("session-of-another-deployment")
    engine.add("session-ancient", age=3 * 24 * 3600)
    stray = workspace(settings, "session-of-another-deployment")
    unrelated = settings.workspace_root / "not-a-session"
    unrelated.mkdir()
    ownerless_new = settings.workspace_root / "s-new"
    ownerless_new.mkdir()
    ownerless_old = settings.workspace_root / "s-old"
    ownerless_old.mkdir()
    os.utime(ownerless_old, (time.time() - 3600, time.time() - 3600))

    report = reap(settings, redis, engine, here=HERE)

    assert engine.ids() == ["session-of-another-deployment"]
    assert report.unknown == ["session-of-another-deployment"] and stray.exists()
    assert report.containers == ["session-ancient"] and unrelated.exists()
    # A workspace whose owner file was never written is a leftover once it is old.
    assert ownerless_new.exists() and not ownerless_old.exists()


def test_without_a_docker_engine_workspaces_are_still_reaped(github, redis, settings):
    job, _ = new_session(github, redis)
    job.set_status(JobStatus.FAILED)
    path = workspace(settings, job.id)

    class Down:
        class containers:  # noqa: N801
            @staticmethod
            def list(**_):
                raise ConnectionError("engine down")

    report = reap(settings, redis, Down(), here=HERE, interrupt=lambda job, why: "no_comment")
    assert not path.exists() and report.errors and "engine down" in report.errors[0]


# -- the interrupted comment --------------------------------------------------------------


def test_interrupting_twice_edits_once(github, redis, settings):
    job, number = new_session(github, redis)
    comment = post_tracking(settings, github, number, job.id)

    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "edited"
    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "claimed"
    redis.delete(interrupted.done_key(job.id))  # even without the claim: the comment is final
    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "already_final"
    assert edits_of(github, comment) == 1
    assert redis.zscore(PENDING, job.id) is None


def test_an_interrupted_sessions_check_run_ends_as_a_failure_too(github, redis, settings):
    pr = github.add_pull(REPO, NewPull(f"checked-{os.urandom(3).hex()}", files={"a": "a\n"}))
    request = SessionRequest(
        delivery_id=f"d-pr-{pr.number}",
        installation_id=INSTALLATION,
        repo=REPO,
        number=pr.number,
        requester="octocat",
        requester_id=583231,
        instruction="fix it",
        pull=True,
    )
    job = Job.fetch(enqueue(redis, request).session_id, connection=redis, serializer="json")
    gh = RepoSession(settings, INSTALLATION, REPO, ISSUE_SESSION_PERMISSIONS)
    check = CheckRun(gh, request, job.id, redis)
    check.queue()
    check.start()  # then the session's process is killed
    post_tracking(settings, github, pr.number, job.id)

    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "edited"
    [run] = [r for r in github.check_runs_of(REPO) if r.external_id == job.id]
    assert (run.status, run.conclusion, run.actions) == ("completed", "failure", [])
    assert run.output["title"] == "Interrupted"
    assert WORKER_STOPPED in (run.output["summary"] or "")


def test_a_comment_already_final_is_left_alone(github, redis, settings):
    job, number = new_session(github, redis)
    comment = post_tracking(settings, github, number, job.id, state="done")
    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "already_final"
    assert edits_of(github, comment) == 0


def test_no_comment_is_ever_created_and_a_quoted_marker_is_not_ours(github, redis, settings):
    job, number = new_session(github, redis)
    quoted = github.add_comment(REPO, number, f"> it said {marker(job.id)}", "octocat")
    posts = sum(1 for r in github.requests if r.method == "POST" and r.path.endswith("/comments"))

    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "no_comment"
    assert (
        sum(1 for r in github.requests if r.method == "POST" and r.path.endswith("/comments"))
        == posts
    )
    assert edits_of(github, quoted.id) == 0


def test_the_comment_is_found_among_many_pages_of_comments(github, redis, settings):
    job, number = new_session(github, redis)
    for i in range(230):
        github.add_comment(REPO, number, f"chatter {i}", "octocat")
    comment = post_tracking(settings, github, number, job.id)
    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "edited"
    assert marker(job.id, "failed") in comment_body(github, comment)


def test_a_review_thread_reply_is_found_among_the_pulls_review_comments(github, redis, settings):
    pull = github.add_pull(REPO, NewPull("feature-x", files={"a.py": "x = 1\n"}, title="Feature"))
    asked = github.add_review_comment(
        REPO, pull.number, {"path": "a.py", "line": 1, "body": "/claude tidy"}, "octocat"
    )
    request = SessionRequest(
        delivery_id=f"d-review-{os.urandom(4).hex()}",
        installation_id=INSTALLATION,
        repo=REPO,
        number=pull.number,
        requester="octocat",
        requester_id=583231,
        instruction="tidy",
        pull=True,
        trigger="review_comment",
        review_comment_id=asked.id,
    )
    queued = enqueue(redis, request)
    job = Job.fetch(queued.session_id, connection=redis, serializer="json")
    gh = RepoSession(settings, INSTALLATION, REPO, ISSUE_SESSION_PERMISSIONS)
    reply = gh.reply_review_comment(pull.number, asked.id, f"👀\n\n{marker(job.id)}")

    assert interrupt_job(job, redis, WORKER_STOPPED, settings) == "edited"
    body = next(c.body for c in github.review_comments if c.id == reply["id"])
    assert marker(job.id, "failed") in body and headline(WORKER_STOPPED) in body


def test_github_unreachable_leaves_the_session_pending_for_the_next_pass(github, redis, settings):
    job, number = new_session(github, redis)
    comment = post_tracking(settings, github, number, job.id)
    github.fail_next("GET", rf"/issues/{number}/comments", 403)

    with pytest.raises(Exception):  # noqa: B017 - githubkit's RequestFailed
        interrupt_job(job, redis, "an operator stopped it", settings)
    assert redis.zscore(PENDING, job.id) is not None
    assert marker(job.id, "working") in comment_body(github, comment)

    assert retry_pending(redis, settings) == [job.id]
    assert marker(job.id, "failed") in comment_body(github, comment)
    assert headline("an operator stopped it") in comment_body(github, comment)  # the first why
    assert redis.zscore(PENDING, job.id) is None


def test_jobs_that_are_not_sessions_are_ignored(redis):
    job = Job.create("jobs.upkeep.redelivery.scheduled_sweep", connection=redis, serializer="json")
    assert interrupt_job(job, redis) == "not_a_session"


# -- RQ's own paths -----------------------------------------------------------------------


def test_enqueued_sessions_carry_the_failure_and_stopped_callbacks(github, redis):
    job, _ = new_session(github, redis)
    assert job.failure_callback is on_failure
    assert job.stopped_callback is interrupted.on_stopped
    assert job.failure_callback_timeout == 60


def test_rqs_abandoned_job_cleanup_reaps_and_interrupts_through_the_callback(
    github, redis, settings
):
    job, number = new_session(github, redis)
    start(redis, job, alive_key=False)  # the worker died: its key expired with its heartbeat
    registry = StartedJobRegistry("sessions", connection=redis, serializer="json")
    redis.zadd(registry.key, {f"{job.id}:exec-1": time.time() - 5})  # heartbeat lapsed
    comment = post_tracking(settings, github, number, job.id)
    path = workspace(settings, job.id)
    # A real container of the session, left behind by its dead horse (created, never started).
    engine = docker.from_env()
    try:
        engine.images.get(IMAGE)
    except (ImageNotFound, DockerException) as exc:
        pytest.fail(f"needs the Docker engine and {IMAGE} (bash scripts/build-images.sh): {exc}")
    engine.containers.create(IMAGE, "true", labels={LABEL: job.id})

    registry.cleanup()  # what a worker's maintenance runs (the callback finds the engine itself)

    assert engine.containers.list(all=True, filters={"label": f"{LABEL}={job.id}"}) == []
    assert not path.exists()
    assert headline(WORKER_STOPPED) in comment_body(github, comment)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert job.id in FailedJobRegistry("sessions", connection=redis, serializer="json")
    # The reaper coming after it changes nothing.
    assert reap(settings, redis, FakeDocker(), here=HERE).interrupted == []
    assert edits_of(github, comment) == 1


def test_a_failing_callback_never_raises_into_rqs_cleanup(github, redis, caplog):
    job, _ = new_session(github, redis)
    dead = dead_redis()  # Redis gone mid-cleanup
    on_failure(job, dead, RuntimeError, RuntimeError("x"), None)  # logged, not raised
    failed = [r for r in caplog.records if "failure callback" in r.getMessage()]
    assert failed, caplog.text
    # The redacting log filter (once installed) turns the traceback into scrubbed text.
    record = failed[0]
    trace = record.exc_text or logging.Formatter().formatException(record.exc_info)
    assert "ConnectionError" in trace, trace


# -- liveness and gVisor leftovers ----------------------------------------------------------


def test_process_tokens_tell_a_reused_pid_and_a_zombie_from_the_original():
    assert token_alive(process_token(os.getpid()))
    pid, start_time = process_token(os.getpid()).split(":")
    assert not token_alive(f"{pid}:{int(start_time) + 1}")
    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not yet waited for
    assert process_token(zombie.pid) == ""
    zombie.wait()


def test_worker_alive_reads_the_worker_hash(redis):
    key = Worker.redis_worker_namespace_prefix
    redis.hset(
        key + "w",
        mapping={"current_job": "j", HOST_FIELD: HERE, PID_FIELD: process_token(os.getpid())},
    )
    assert worker_alive(redis, "w", "j", here=HERE)
    assert not worker_alive(redis, "w", "other-job", here=HERE)
    assert not worker_alive(redis, "", "j", here=HERE)
    assert not worker_alive(redis, "missing", "j", here=HERE)


def fake_proc(root: Path, pid: int, argv: list[str], start_ticks: int) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    fields = ["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 10
    (root / str(pid) / "stat").write_text(f"{pid} (exe) " + " ".join(fields))


def test_runsc_processes_of_containers_docker_forgot_are_found_and_killed(tmp_path):
    forgotten, known = "a" * 64, "b" * 64
    log = "--log=/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{}/log.json"
    ticks = os.sysconf("SC_CLK_TCK")
    (tmp_path / "uptime").write_text("10000.00 1.00\n")
    old = (10000 - 600) * ticks
    fake_proc(tmp_path, 101, ["runsc-sandbox", log.format(forgotten), "boot", forgotten], old)
    fake_proc(tmp_path, 102, ["runsc-gofer", log.format(forgotten), "gofer"], old)
    fake_proc(
        tmp_path,
        103,
        [
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "moby",
            "-id",
            forgotten,
            "-address",
            "/x.sock",
        ],
        old,
    )
    fake_proc(tmp_path, 104, ["runsc-sandbox", log.format(known)], old)
    fake_proc(tmp_path, 105, ["runsc-gofer", log.format("c" * 64)], (10000 - 5) * ticks)  # new
    fake_proc(tmp_path, 106, ["python", "-m", "jobs.worker"], old)

    found = {pid: (cid, round(age)) for pid, cid, age in runsc_processes(tmp_path)}
    assert found == {
        101: (forgotten, 600),
        102: (forgotten, 600),
        103: (forgotten, 600),
        104: (known, 600),
        105: ("c" * 64, 5),
    }

    engine = FakeDocker()
    engine.add("session-x").id = known
    killed = []
    kill = lambda pid, sig: killed.append((pid, sig))  # noqa: E731
    assert sorted(kill_runsc_orphans(engine, tmp_path, kill=kill)) == [101, 102, 103]
    assert [sig for _, sig in killed] == [9, 9, 9]


def test_a_failure_that_rq_will_retry_leaves_the_comment_alone(github, redis, settings):
    job, number = new_session(github, redis)
    comment = post_tracking(settings, github, number, job.id)
    job.retries_left = 1
    on_failure(job, redis, RuntimeError, RuntimeError("x"), None)
    assert edits_of(github, comment) == 0


# -- the worker's settings ------------------------------------------------------------------


def test_the_reaper_interval_sets_rqs_maintenance_and_the_idle_wake_up(
    redis, settings, monkeypatch
):
    from jobs.worker import SessionWorker

    assert WorkerSettings.parse().reaper_interval == 60
    monkeypatch.setenv("REAPER_INTERVAL", "7")
    interval = WorkerSettings.parse().reaper_interval
    queue = session_queue(redis, "sessions")
    worker = SessionWorker(
        [queue], connection=redis, serializer="json", settings=settings, reaper_interval=interval
    )
    assert worker.maintenance_interval == 7
    assert worker.dequeue_timeout == 8  # an idle worker wakes up for each pass
