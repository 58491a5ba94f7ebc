"""Crashes and shutdowns on the real processes: workers started from the Procfile, SIGKILLed and
SIGTERMed, gunicorn SIGTERMed with deliveries in flight, and Docker faults.

This module runs a stack of its own beside the shared `service` (Redis databases 2 and 3, its
own workspace root, workers it starts and kills itself), on the same GitHub and Anthropic
stand-ins, Redis server and dockerd. Each test prints the figures it measures (`FIGURE …`; run
with `-s`). The engine-restart test restarts a dockerd of
its own, never the machine's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import docker
import httpx
import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from jobs.common.queue import active_key, claim_key
from jobs.sandbox.workspace import OWNER_FILE
from jobs.upkeep.interrupted import headline
from jobs.upkeep.leftovers import PID_FIELD
from tests.e2e.conftest import (
    FINAL,
    INSTALLATION,
    REPO,
    SECRET,
    Service,
    leftover_containers,
    procfile,
    role_env,
    service_env,
)
from tests.e2e.machines import horse_of, loaded_engine
from tests.standins.anthropic import Text
from tests.support import (
    ROOT,
    RedisServer,
    delivery_headers,
    free_port,
    issue_comment_payload,
    session_containers,
    wait_for,
)

REAPER_INTERVAL = 5  # seconds, for this module's workers (the default is 60)
INTERRUPTED = headline("the worker stopped")
pytestmark = pytest.mark.timeout(180)


def figure(name: str, value: float, unit: str = "s") -> None:
    print(f"\nFIGURE {name}: {value:.2f} {unit}", flush=True)


class Stack:
    """gunicorn and any number of workers, each a process group this module controls."""

    def __init__(self, github, anthropic, redis_url: str, image: str, root: Path) -> None:
        self.root = root
        self.workspaces = root / "workspaces"
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.port = free_port()
        self.env = service_env(
            github,
            anthropic,
            redis_url,
            image,
            self.workspaces,
            self.port,
            REAPER_INTERVAL=str(REAPER_INTERVAL),
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.service = Service(
            f"http://127.0.0.1:{self.port}", github, anthropic, self.logs, redis_url
        )

    def start(self, name: str, role: str = "worker", **env: str) -> subprocess.Popen:
        self.logs[name] = self.root / f"{name}.log"
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {procfile()[role]}"],
            cwd=ROOT,
            env=role_env({**self.env, **env}, role),
            start_new_session=True,
            stdout=self.logs[name].open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        if role == "worker":
            self.logs["worker"] = self.logs[name]  # what Service.wait_final shows on failure
            wait_for(
                lambda: self.worker_name(proc.pid) or self._exited(name),
                30,
                what=f"worker {name} to register",
            )
            self._exited(name, fail=True)
        elif role != "web":  # the gateway process: up once its control socket answers
            wait_for(
                lambda: self._exited(name, fail=True) or self._control_socket(),
                30,
                what=f"{name} to listen",
            )
        else:
            port = env.get("PORT", str(self.port))
            wait_for(lambda: self._healthy(name, port), 30, what=f"{name} to answer")
        return proc

    def _control_socket(self) -> bool:
        path = Path(self.env.get("GATEWAY_SOCKET") or self.workspaces / "gateway.ctl")
        with socket.socket(socket.AF_UNIX) as conn:
            try:
                conn.connect(str(path))
            except OSError:
                return False
        return True

    def _exited(self, name: str, fail: bool = False) -> bool:
        if self.procs[name].poll() is None:
            return False
        if fail:
            raise AssertionError(f"{name} exited:\n{self.service.tail(name)}")
        return True

    def _healthy(self, name: str, port: str) -> bool:
        self._exited(name, fail=True)
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_name(self, pid: int) -> str | None:
        for key in self.redis.scan_iter("rq:worker:*"):
            data = self.redis.hgetall(key)
            if data.get(b"pid") == str(pid).encode() and PID_FIELD.encode() in data:
                return key.decode().removeprefix("rq:worker:")
        return None

    def stop(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with _gone():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with _gone():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            horse = horse_of(proc.pid)
            self.stop(name, timeout=5)
            if horse:
                with _gone():
                    os.killpg(horse, signal.SIGKILL)

    # -- a session ------------------------------------------------------------------------

    def ask(self, number: int, text: str = "/claude look into this") -> str:
        resp = self.service.comment(number, text)
        assert resp.status_code == 202, resp.text
        return resp.json()["session"]

    def job(self, session_id: str) -> Job:
        return Job.fetch(session_id, connection=self.redis, serializer="json")

    def dirs(self, session_id: str) -> list[Path]:
        """The session's workspaces: `s-<random>/`, or a claimed warm slot's `p-<random>/`,
        named in their owner file."""
        owners = [
            *self.workspaces.glob(f"s-*/{OWNER_FILE}"),
            *self.workspaces.glob(f"p-*/{OWNER_FILE}"),
        ]
        return [p.parent for p in owners if p.read_text().strip() == session_id]

    def leftovers(self, session_id: str, engine=None) -> list[str]:
        if engine is None:
            containers = leftover_containers(session_id)
        else:
            containers = session_containers(engine, session_id, all=True)
        found = [f"container {c.short_id}" for c in containers]
        for path in self.dirs(session_id):
            found += [f"dir {path.name}"] + [f"socket {p}" for p in path.glob("control/*.sock")]
        return found

    def wait_running(self, session_id: str, timeout: float = 90, engine=None) -> Path:
        """Until the session's container runs and the model has its request; its gateway socket."""
        engine = engine or docker.from_env()

        def running():
            up = session_containers(engine, session_id)
            sockets = [p / "control" / "gateway.sock" for p in self.dirs(session_id)]
            sockets = [p for p in sockets if p.exists()]
            return sockets[0] if up and sockets and self.service.anthropic.main_requests() else None

        try:
            return wait_for(running, timeout, what=f"{session_id} to be mid-turn")
        except AssertionError:
            raise AssertionError(
                f"{session_id} never mid-turn: containers "
                f"{[c.status for c in leftover_containers(session_id)]}, workspaces "
                f"{[str(p) for p in self.workspaces.glob('*/*')]}, model requests "
                f"{[r.kind for r in self.service.anthropic.requests]}"
            ) from None

    def comment_of(self, number: int):
        ours = self.service.tracking_comments(number)
        assert len(ours) == 1, [c.body for c in ours]  # never a second one
        return ours[0]


class _gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


@pytest.fixture(scope="module")
def stack(github, anthropic, redis_server, agent_image, tmp_path_factory):
    redis_url = redis_server.removesuffix("/0") + "/2"
    Redis.from_url(redis_url).flushdb()
    s = Stack(github, anthropic, redis_url, agent_image, tmp_path_factory.mktemp("crashes"))
    for role in procfile():
        if role != "worker":
            s.start(role, role=role)  # the web process, and the gateway process if there is one
    yield s
    s.stop_all()


@pytest.fixture
def workers(stack):
    """Each test starts the workers it needs; none outlives it."""
    yield stack
    for name in [n for n in stack.procs if n.startswith("worker")]:
        proc = stack.procs[name]
        horse = horse_of(proc.pid)
        stack.stop(name, timeout=5)
        if horse:
            with _gone():
                os.killpg(horse, signal.SIGKILL)


# -- 1. SIGKILL ---------------------------------------------------------------------------


def test_sigkill_mid_session_leaves_nothing_behind_and_the_comment_says_interrupted(workers):
    s = workers
    s.service.anthropic.script([Text("too late", delay=60)])
    a = s.start("worker-a")
    b = s.start("worker-b")
    number = s.service.new_issue("Killed mid-session")
    session_id = s.ask(number)
    socket_path = s.wait_running(session_id)
    runner = s.job(session_id).worker_name
    victim, survivor = (a, "worker-b") if runner == s.worker_name(a.pid) else (b, "worker-a")
    assert runner == s.worker_name(victim.pid)

    # The survivor's reaper ticks every 5 s: a live session is never touched.
    time.sleep(3 * REAPER_INTERVAL)
    assert leftover_containers(session_id) and s.dirs(session_id) and socket_path.exists()
    assert "kept 1 live" in s.service.tail(survivor, 200)
    assert "state=working" in s.comment_of(number).body

    horse = horse_of(victim.pid)
    assert horse, "no work horse found"
    killed = time.monotonic()
    os.killpg(victim.pid, signal.SIGKILL)  # the worker (and its scheduler)
    os.killpg(horse, signal.SIGKILL)  # the horse leads a process group of its own
    victim.wait(10)
    assert s.leftovers(session_id), "the SIGKILL should leave the container and workspace"

    wait_for(
        lambda: not s.leftovers(session_id),
        3 * REAPER_INTERVAL + 30,
        what="the survivor's reaper to remove the leftovers",
    )
    reaped = time.monotonic() - killed
    final = s.service.wait_final(number, timeout=30)
    ended = time.monotonic() - killed
    figure("SIGKILL -> no container, workspace or socket (reaper tick 5 s)", reaped)
    figure("SIGKILL -> tracking comment interrupted", ended)
    assert reaped <= REAPER_INTERVAL + 15

    assert INTERRUPTED in final.body and f"{session_id} state=failed" in final.body
    assert "/claude …` again to retry" in final.body
    assert s.comment_of(number) is not None  # still exactly one tracking comment
    patches = [r.json for r in s.service.github.requests if r.method == "PATCH" and r.json]
    ours = [str(p.get("body")) for p in patches if session_id in str(p.get("body"))]
    assert len([body for body in ours if "Interrupted" in body]) == 1  # other tests' are not
    assert s.redis.get(active_key(f"{REPO}#{number}")) is None  # the thread is free again
    assert not socket_path.exists()
    if "gateway" in s.logs:  # the gateway process closed the session's gateway when asked
        assert f"gateway closed for {session_id}" in s.service.tail("gateway", 400)


def test_a_restarted_worker_reaps_at_start(workers):
    s = workers
    s.service.anthropic.script([Text("too late", delay=60)])
    only = s.start("worker-only")
    number = s.service.new_issue("Killed, then restarted")
    session_id = s.ask(number)
    s.wait_running(session_id)
    horse = horse_of(only.pid)
    os.killpg(only.pid, signal.SIGKILL)
    os.killpg(horse, signal.SIGKILL)
    only.wait(10)
    time.sleep(2)
    assert s.leftovers(session_id), "with no worker left, nothing reaps"

    started = time.monotonic()
    s.start("worker-restarted")
    wait_for(lambda: not s.leftovers(session_id), 30, what="the reaper at worker start")
    figure("worker restart -> leftovers of the killed session gone", time.monotonic() - started)
    final = s.service.wait_final(number, timeout=30)
    assert INTERRUPTED in final.body


def test_a_horse_killed_under_a_live_worker_is_cleaned_up_at_once(workers):
    # What the OOM killer or RQ's hard timeout does: the horse dies, its worker lives on.
    s = workers
    s.service.anthropic.script([Text("too late", delay=60), Text("Nothing to change here.")])
    worker = s.start("worker-horse")
    number = s.service.new_issue("Horse killed")
    session_id = s.ask(number)
    s.wait_running(session_id)

    killed = time.monotonic()
    os.killpg(horse_of(worker.pid), signal.SIGKILL)
    wait_for(lambda: not s.leftovers(session_id), 15, what="no leftovers")
    gone = time.monotonic() - killed
    final = s.service.wait_final(number, timeout=15)
    figure("horse SIGKILL (worker alive) -> no leftovers", gone)
    assert headline("the session's process was killed") in final.body
    wait_for(lambda: s.job(session_id).get_status() == JobStatus.FAILED, 10, what="FAILED")

    # The same worker takes the next session.
    after = s.service.new_issue("After the horse")
    s.ask(after)
    assert "Nothing to change here." in s.service.wait_final(after, timeout=120).body
    assert worker.poll() is None


def test_rqs_stop_job_command_cleans_up_through_the_stopped_callback(workers):
    from rq.command import send_stop_job_command

    s = workers
    s.service.anthropic.script([Text("too late", delay=60)])
    s.start("worker-stop")
    number = s.service.new_issue("Stopped by an operator")
    session_id = s.ask(number)
    s.wait_running(session_id)

    stopped = time.monotonic()
    send_stop_job_command(s.redis, session_id, serializer="json")
    wait_for(lambda: not s.leftovers(session_id), 15, what="no leftovers")
    figure("rq stop-job -> no leftovers", time.monotonic() - stopped)
    final = s.service.wait_final(number, timeout=15)
    assert headline("an operator stopped it") in final.body
    # RQ marks the job stopped once the callback has returned.
    wait_for(lambda: s.job(session_id).get_status() == JobStatus.STOPPED, 10, what="STOPPED")


# -- 2. Graceful shutdown -----------------------------------------------------------------


def test_sigterm_lets_the_running_session_finish_then_the_next_worker_takes_the_queue(workers):
    s = workers
    s.service.anthropic.script(
        [
            Text("First answer, nothing to change.", delay=20),
            Text("Second answer, nothing to change."),
        ]
    )
    warm = s.start("worker-warm")
    number = s.service.new_issue("Warm shutdown")
    session_id = s.ask(number)
    s.wait_running(session_id)  # the model has the request and answers 20 s after it

    termed = time.monotonic()
    os.kill(warm.pid, signal.SIGTERM)  # only the worker: the horse is in its own group
    later = s.service.new_issue("Queued during the shutdown")
    queued_id = s.ask(later, "/claude and this one")
    warm.wait(120)
    grace = time.monotonic() - termed
    figure(
        "warm shutdown: SIGTERM -> worker exit, session finished (model answer due 20 s "
        "after its request)",
        grace,
    )
    assert 3 < grace < 60

    final = s.comment_of(number)
    assert FINAL.search(final.body) and "No changes were needed" in final.body
    assert "First answer" in final.body and "Interrupted" not in final.body
    assert not s.leftovers(session_id)
    assert s.job(session_id).get_status() == JobStatus.FINISHED
    # The worker took nothing new once asked to stop; the next worker does.
    assert s.job(queued_id).get_status() == JobStatus.QUEUED
    s.start("worker-next")
    assert "Second answer" in s.service.wait_final(later, timeout=120).body


def test_a_second_sigterm_is_a_cold_shutdown_that_cleans_up_at_once(workers):
    s = workers
    s.service.anthropic.script([Text("too late", delay=60)])
    cold = s.start("worker-cold")
    number = s.service.new_issue("Cold shutdown")
    session_id = s.ask(number)
    s.wait_running(session_id)

    os.kill(cold.pid, signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within a second of the first
    second = time.monotonic()
    os.kill(cold.pid, signal.SIGTERM)
    cold.wait(60)
    exited = time.monotonic() - second
    wait_for(lambda: not s.leftovers(session_id), 10, what="no leftovers")
    gone = time.monotonic() - second
    final = s.service.wait_final(number, timeout=10)
    ended = time.monotonic() - second
    figure("cold shutdown: second SIGTERM -> worker exit (after its own cleanup)", exited)
    figure("cold shutdown: second SIGTERM -> no leftovers", gone)
    figure("cold shutdown: second SIGTERM -> comment interrupted", ended)

    assert INTERRUPTED in final.body
    job = s.job(session_id)
    assert job.get_status() == JobStatus.FAILED
    assert session_id not in StartedJobRegistry("sessions", connection=s.redis, serializer="json")
    assert "Cold shutdown" in (job.latest_result().exc_string or "")
    assert "cold shut down" in s.service.tail("worker-cold", 100)


# -- gunicorn -----------------------------------------------------------------------------


def _delivery(number: int) -> tuple[str, bytes, dict]:
    payload = issue_comment_payload(REPO, number, "/claude flood", INSTALLATION)
    delivery = str(uuid.uuid4())
    # Each delivery its own comment: the same comment again is a replay, not a new request.
    payload["comment"]["id"] = uuid.UUID(delivery).int % 10**12
    body = json.dumps(payload).encode()
    return delivery, body, delivery_headers("issue_comment", body, SECRET, delivery)


def test_sigterm_to_gunicorn_drops_no_accepted_delivery(stack, tmp_path):
    # A web process of its own, on a database no worker reads: the sessions only pile up.
    db = stack.redis_url.rsplit("/", 1)[0] + "/3"
    redis = Redis.from_url(db)
    redis.flushdb()
    port = free_port()
    stack.start("web-term", role="web", REDIS_URL=db, PORT=str(port))
    web = stack.procs["web-term"]
    stack.service.github.add_issue(REPO, 9000, "Flooded", "body", "octocat", 583231)

    # One delivery held mid-body across the TERM: accepted, then answered after it.
    held_id, body, headers = _delivery(9000)
    conn = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    conn.sendall(
        f"POST /webhooks HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body[:100]
    )

    results: list[tuple[str, int | str, float, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def flood():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not stop.is_set():
                delivery, payload, hdrs = _delivery(9000)
                began = time.monotonic()
                try:
                    status: int | str = client.post(
                        "/webhooks", content=payload, headers=hdrs
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    results.append((delivery, status, began, time.monotonic()))
                if isinstance(status, str):
                    return  # the server is gone

    threads = [threading.Thread(target=flood) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    termed = time.monotonic()
    os.kill(web.pid, signal.SIGTERM)
    time.sleep(1.0)
    conn.sendall(body[100:])
    answer = conn.recv(65536).decode(errors="replace")
    conn.close()
    web.wait(40)
    exited = time.monotonic() - termed
    stop.set()
    for t in threads:
        t.join(15)

    accepted = [r for r in results if r[1] == 202]
    straddling = [r for r in accepted if r[2] < termed < r[3]]
    refused = [r for r in results if isinstance(r[1], str)]
    others = [r for r in results if r not in accepted and r not in refused]
    figure("gunicorn SIGTERM -> exit", exited)
    figure("deliveries answered 202 (before/after/across the TERM)", len(accepted), "")
    figure("deliveries in flight across the TERM and answered 202", len(straddling), "")
    # Each flood thread stops at its first refused or reset connection: GitHub would log that
    # delivery as failed, and the redelivery sweep asks for it again.
    figure("flood threads stopped by a refused or reset connection", len(refused), "")
    assert answer.startswith("HTTP/1.1 202"), answer[:200]
    assert accepted and not others, others[:5]
    queued = set(redis.lrange("rq:queue:sessions", 0, -1))
    for delivery in [held_id] + [r[0] for r in accepted]:
        assert redis.exists(claim_key(delivery)), delivery
        assert f"session-{delivery}".encode() in queued, delivery
    stack.procs.pop("web-term", None)
    redis.flushdb()


# -- Redis restarted ----------------------------------------------------------------------


@pytest.mark.timeout(420)  # two outages and three sessions
def test_redis_killed_and_restarted_mid_session_the_session_still_ends_once(
    github, anthropic, agent_image, tmp_path_factory
):
    redis = RedisServer(tmp_path_factory.mktemp("redis-aof"), durable=True)
    redis.start()
    s = Stack(github, anthropic, redis.url, agent_image, tmp_path_factory.mktemp("redis-down"))
    try:
        for role in procfile():
            s.start(role, role=role)
        # The outage spans a heartbeat of the worker (RQ's job monitoring, every 30 s).
        s.service.anthropic.script(
            [
                Text("Answered across the outage, nothing to change.", delay=50),
                Text("Ended while Redis was away.", delay=8),
                Text("Served after both outages."),
            ]
        )
        number = s.service.new_issue("Redis dies mid-session")
        session_id = s.ask(number)
        s.wait_running(session_id)

        redis.kill()  # SIGKILL: no goodbye to any client
        down = s.service.comment(number, "/claude and meanwhile this")
        assert down.status_code == 503, down.text  # never 2xx for what could not be queued
        time.sleep(35)
        assert s.procs["worker"].poll() is None, s.service.tail("worker", 80)
        assert "Redis unreachable" in s.service.tail("worker", 200)  # a heartbeat fell in it
        redis.start()
        back = time.monotonic()

        final = s.service.wait_final(number, timeout=120)
        ended = time.monotonic() - back
        figure("Redis back -> the session's comment final", ended)
        assert "Answered across the outage" in final.body and "state=done" in final.body
        assert s.comment_of(number) is not None  # exactly one tracking comment
        wait_for(lambda: not s.leftovers(session_id), 30, what="no leftovers")
        wait_for(
            lambda: s.job(session_id).get_status() == JobStatus.FINISHED,
            30,
            what="RQ to record the job finished",
        )
        assert s.redis.get(active_key(f"{REPO}#{number}")) is None

        # A session that ends while Redis is away: its answer is posted all the same, and the
        # worker, which cannot record the end, waits for Redis instead of quitting.
        later = s.service.new_issue("Ends during the outage")
        second = s.ask(later, "/claude and now this")
        s.wait_running(second)
        redis.kill()
        ended_down = s.service.wait_final(later, timeout=120)
        assert "Ended while Redis was away" in ended_down.body and "state=done" in ended_down.body
        wait_for(lambda: not s.leftovers(second), 30, what="no leftovers of the second session")
        time.sleep(5)  # the worker is back in its dequeue, retrying
        assert s.procs["worker"].poll() is None, s.service.tail("worker", 80)
        redis.start()

        # The same worker, web and gateway go on: the next session runs and ends.
        last = s.service.new_issue("After the outages")
        s.ask(last, "/claude and this too")
        assert "Served after both outages" in s.service.wait_final(last, timeout=150).body
        assert s.procs["worker"].poll() is None, s.service.tail("worker", 80)
        assert s.comment_of(later).body == ended_down.body  # never overwritten, never doubled
    finally:
        s.stop_all()
        redis.kill()


# -- 3. Docker faults ---------------------------------------------------------------------


@pytest.fixture
def crash_tag(agent_image):
    """An image tag the test points the worker at, and takes away or re-points as it goes."""
    client = docker.from_env()
    tag = f"claudecluster/agent:crash-e2e-{uuid.uuid4().hex[:8]}"
    yield tag
    for name in (tag, tag + "-exits"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(name, noprune=True)


def test_a_missing_image_and_a_container_that_exits_at_once_fail_cleanly_and_the_worker_goes_on(
    workers, agent_image, crash_tag
):
    s = workers
    client = docker.from_env()
    worker = s.start("worker-faults", AGENT_IMAGE=crash_tag)

    # The image is missing.
    missing = s.service.new_issue("No image")
    missing_id = s.ask(missing)
    body = s.service.wait_final(missing, timeout=60).body
    assert "could not finish" in body and f"the agent image {crash_tag} is not built" in body
    # The comment is final a moment before the worker's cleanup ends: wait for it.
    wait_for(
        lambda: not s.leftovers(missing_id), 30, what="the session's container and workspace gone"
    )

    # The container starts and its command exits at once.
    client.images.build(fileobj=_dockerfile(agent_image), tag=crash_tag + "-exits", rm=True)
    client.images.get(crash_tag + "-exits").tag(crash_tag)
    s.service.anthropic.script([])
    quick = s.service.new_issue("Exits at once")
    quick_id = s.ask(quick)
    body = s.service.wait_final(quick, timeout=60).body
    assert "could not finish" in body and "state=failed" in body, body
    assert "Claude stopped before it finished" in body  # what the sandbox reports today
    # The comment is final a moment before the worker's cleanup ends: wait for it.
    wait_for(
        lambda: not s.leftovers(quick_id), 30, what="the session's container and workspace gone"
    )

    # The same worker process serves the next session, which works.
    client.images.get(agent_image).tag(crash_tag)
    s.service.anthropic.script([Text("All good, nothing to change.")])
    fine = s.service.new_issue("Works again")
    s.ask(fine)
    assert "No changes were needed" in s.service.wait_final(fine, timeout=120).body
    assert worker.poll() is None and s.worker_name(worker.pid)


def _dockerfile(base: str) -> io.BytesIO:
    command = '["/bin/sh", "-c", "echo the sandbox refuses to start >&2; exit 1"]'
    return io.BytesIO(f"FROM {base}\nENTRYPOINT {command}\n".encode())


def test_an_invalid_runtime_fails_the_session_cleanly_and_the_worker_goes_on(workers):
    s = workers
    worker = s.start("worker-runtime", SANDBOX_RUNTIME="no-such-runtime")
    for title in ("Bad runtime", "Bad runtime again"):
        number = s.service.new_issue(title)
        session_id = s.ask(number)
        body = s.service.wait_final(number, timeout=60).body
        assert "could not finish" in body and "no-such-runtime" in body, body
        wait_for(
            lambda sid=session_id: not s.leftovers(sid), 30, what="the session's leftovers gone"
        )
    assert worker.poll() is None and s.worker_name(worker.pid)


# -- the engine restarting mid-session (opt-in) ---------------------------------------------


@pytest.fixture
def private_engine(agent_image):
    # Starts a dockerd of its own and loads the agent image into it (about a minute): the
    # shared engine cannot be restarted under other tests.
    with loaded_engine(agent_image) as engine:
        yield engine


@pytest.mark.timeout(400)
def test_the_engine_restarting_mid_session_fails_it_cleanly_and_the_worker_goes_on(
    workers, private_engine
):
    s, engine = workers, private_engine
    s.service.anthropic.script([Text("too late", delay=60), Text("Back to normal.")])
    worker = s.start("worker-engine", DOCKER_HOST=engine.url)
    number = s.service.new_issue("Engine restart")
    session_id = s.ask(number)
    s.wait_running(session_id, engine=engine.client)

    restarted = time.monotonic()
    engine.stop()
    down = time.monotonic() - restarted
    engine.start()
    figure("private dockerd stop (its containers stopped) + start", time.monotonic() - restarted)
    figure("  of which stopping", down)
    final = s.service.wait_final(number, timeout=60)
    figure("engine stop -> session's final comment", time.monotonic() - restarted)
    assert "state=failed" in final.body, final.body
    print("\nengine-restart comment:\n" + final.body, flush=True)
    wait_for(
        lambda: not s.leftovers(session_id, engine.client),
        3 * REAPER_INTERVAL + 10,
        what="no leftovers after the restart",
    )
    figure("engine stop -> no leftovers", time.monotonic() - restarted)

    after = s.service.new_issue("After the engine came back")
    s.ask(after)
    assert "Back to normal." in s.service.wait_final(after, timeout=120).body
    assert worker.poll() is None
