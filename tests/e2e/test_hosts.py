"""Several worker hosts on one Redis, on two real Docker engines (docs/hosts.md).

Host `a` is this machine's engine; host `b` a dockerd of this module's own (tests/e2e/machines.py)
with the agent image loaded into it. Each host runs what a worker host runs: the Procfile's
worker, gateway and egress, with its own DOCKER_HOST, WORKSPACE_ROOT and REPO_CACHE_DIR; the web
process, Redis and the GitHub and Anthropic stand-ins are shared. Workers run with
REAPER_INTERVAL=5 and JOB_MONITORING_INTERVAL=5, so a lost host's session is abandoned after
5 + 60 s (RQ's fixed grace) rather than 90 s. Figures are printed as `FIGURE …` (run with `-s`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import docker
import httpx
import pytest
from redis import Redis
from rq.job import Job, JobStatus

from jobs.common.settings import WorkerSettings
from jobs.sandbox.host import HOST_FILE, HOST_LABEL, engine_id
from jobs.sandbox.workspace import OWNER_FILE
from jobs.upkeep.interrupted import headline
from jobs.upkeep.leftovers import WORKER_HOST_FIELD, session_running
from jobs.upkeep.reaper import reap
from tests.e2e.conftest import FINAL, Service, procfile, role_env, service_env
from tests.e2e.machines import PrivateEngine, horse_of, loaded_engine
from tests.standins.anthropic import Text
from tests.support import ROOT, free_port, session_containers, wait_for

REAPER_INTERVAL = 5
HEARTBEAT = 5  # JOB_MONITORING_INTERVAL
INTERRUPTED = headline("the worker stopped")
HOST_ROLES = ("gateway", "egress", "worker")  # what each worker host runs
pytestmark = pytest.mark.timeout(600)


def figure(name: str, value: float) -> None:
    print(f"\nFIGURE {name}: {value:.2f} s", flush=True)


class Host:
    """One worker host: an engine, a workspace root and repository cache of its own, and its
    worker, gateway and egress processes (each a process group this module controls)."""

    def __init__(
        self, name: str, env: dict[str, str], root: Path, engine: PrivateEngine | None
    ) -> None:
        self.name = name
        self.root = root
        self.engine = engine
        self.workspaces = root / "workspaces"
        self.env = {
            **env,
            "WORKSPACE_ROOT": str(self.workspaces),
            "REPO_CACHE_DIR": str(root / "repo-cache"),
        }
        if engine is not None:
            self.env["DOCKER_HOST"] = engine.url
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis = Redis.from_url(env["REDIS_URL"])

    @property
    def docker(self) -> docker.DockerClient:
        return self.engine.client if self.engine is not None else docker.from_env()

    @property
    def id(self) -> str:
        """What the worker names its containers and workspaces with: its engine's."""
        return engine_id(self.docker)

    def log(self, role: str) -> Path:
        return self.root / f"{role}.log"

    def tail(self, role: str, lines: int = 60) -> str:
        text = self.log(role).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self, role: str) -> None:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {procfile()[role]}"],
            cwd=ROOT,
            env=role_env(self.env, role),
            start_new_session=True,
            stdout=self.log(role).open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs[role] = proc
        ready = self.worker_name if role == "worker" else lambda: self._listening(role)
        wait_for(lambda: self._exited(role) or ready(), 60, what=f"host {self.name}'s {role}")

    def start_all(self) -> None:
        for role in HOST_ROLES:
            if role in procfile():
                self.start(role)

    def _exited(self, role: str) -> bool:
        if self.procs[role].poll() is not None:
            raise AssertionError(f"host {self.name}'s {role} exited:\n{self.tail(role)}")
        return False

    def _listening(self, role: str) -> bool:
        with socket.socket(socket.AF_UNIX) as conn:
            try:
                conn.connect(str(self.workspaces / f"{role}.ctl"))
            except OSError:
                return False
        return True

    def worker_name(self) -> str | None:
        """The name of this host's running worker, once it has registered with its host id."""
        proc = self.procs.get("worker")
        if proc is None:
            return None
        for key in self.redis.scan_iter("rq:worker:*"):
            data = self.redis.hgetall(key)
            if (
                data.get(b"pid") == str(proc.pid).encode()
                and data.get(WORKER_HOST_FIELD.encode()) == self.id.encode()
            ):
                return key.decode().removeprefix("rq:worker:")
        return None

    def stop(self, role: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(role, None)
        if proc is None or proc.poll() is not None:
            return
        horse = horse_of(proc.pid) if role == "worker" else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if horse:  # the horse leads a process group of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(horse, signal.SIGKILL)

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for role in list(self.procs):
            self.stop(role, sig)

    # -- what a session leaves on this host ------------------------------------------------

    def dirs(self, session_id: str) -> list[Path]:
        return [
            p.parent
            # A fresh workspace (s-*) or a claimed warm slot's (p-*).
            for p in self.workspaces.glob(f"[sp]-*/{OWNER_FILE}")
            if p.read_text().strip() == session_id
        ]

    def containers(self, session_id: str) -> list:
        return session_containers(self.docker, session_id, all=True)

    def leftovers(self, session_id: str) -> list[str]:
        found = [f"container {c.short_id}" for c in self.containers(session_id)]
        return found + [f"dir {p.name}" for p in self.dirs(session_id)]

    def running(self, session_id: str) -> bool:
        """The session's container runs here, labelled with this host, and its workspace here
        names this host."""
        up = session_containers(self.docker, session_id)
        named = [p for p in self.dirs(session_id) if (p / HOST_FILE).is_file()]
        return bool(
            up
            and all(c.labels.get(HOST_LABEL) == self.id for c in up)
            and named
            and all((p / HOST_FILE).read_text() == self.id for p in named)
        )


class Cluster:
    """The shared part (the web process, Redis, the stand-ins) and the worker hosts."""

    def __init__(self, stand_ins, root: Path, engine: PrivateEngine) -> None:
        self.root = root
        redis_url = stand_ins.redis_server.removesuffix("/0") + "/6"
        self.redis = Redis.from_url(redis_url)
        self.redis.flushdb()
        port = free_port()
        self.env = service_env(
            stand_ins.github,
            stand_ins.anthropic,
            redis_url,
            stand_ins.agent_image,
            root / "web-workspaces",
            port,
            REAPER_INTERVAL=str(REAPER_INTERVAL),
            JOB_MONITORING_INTERVAL=str(HEARTBEAT),
        )
        self.hosts = [
            Host("a", self.env, root / "host-a", None),
            Host("b", self.env, root / "host-b", engine),
        ]
        for host in self.hosts:
            host.root.mkdir()
        logs = {f"worker-{h.name}": h.log("worker") for h in self.hosts}
        logs["worker"] = logs["worker-a"]
        self.service = Service(
            f"http://127.0.0.1:{port}", stand_ins.github, stand_ins.anthropic, logs, redis_url
        )
        self.web: subprocess.Popen | None = None

    def start_web(self) -> None:
        self.web = subprocess.Popen(
            ["bash", "-c", f"exec {procfile()['web']}"],
            cwd=ROOT,
            env=role_env(self.env, "web"),
            start_new_session=True,
            stdout=(self.root / "web.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            assert self.web is not None and self.web.poll() is None, "the web process exited"
            try:
                return httpx.get(f"{self.service.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, what="the web process")

    def stop_all(self) -> None:
        for host in self.hosts:
            host.stop_all()
        if self.web is not None and self.web.poll() is None:
            os.killpg(self.web.pid, signal.SIGTERM)
            self.web.wait(30)

    def ask(self, number: int) -> str:
        resp = self.service.comment(number, "/claude look into this")
        assert resp.status_code == 202, resp.text
        return resp.json()["session"]

    def job(self, session_id: str) -> Job:
        return Job.fetch(session_id, connection=self.redis, serializer="json")


@pytest.fixture(scope="module")
def cluster(stand_ins, tmp_path_factory):
    # Host b's engine: a dockerd of this module's own, the agent image loaded (about a minute).
    with loaded_engine(stand_ins.agent_image, prefix="cch-") as engine:
        c = Cluster(stand_ins, tmp_path_factory.mktemp("hosts"), engine)
        try:
            c.start_web()
            for host in c.hosts:
                host.start_all()
            yield c
        finally:
            c.stop_all()


def test_sessions_are_spread_over_both_hosts_each_naming_its_own_leftovers(cluster):
    c = cluster
    a, b = c.hosts
    assert a.id != b.id  # two engines, two hosts
    # Each session holds its worker for a while, so the queue's next one goes to the other.
    c.service.anthropic.script_each_conversation([Text("Looked into it.", delay=8)])
    numbers = [c.service.new_issue(f"Spread {i}") for i in range(4)]
    sessions = {number: c.ask(number) for number in numbers}

    seen: set[str] = set()

    def both_seen_running() -> bool:
        for host in c.hosts:
            if any(host.running(sid) for sid in sessions.values()):
                seen.add(host.name)
        return seen == {"a", "b"}

    wait_for(both_seen_running, 240, interval=0.5, what="a session running on each host")
    for number in numbers:
        assert "Looked into it." in c.service.wait_final(number, timeout=300).body

    ran = {sid: c.job(sid).worker_name for sid in sessions.values()}
    names = {a.worker_name(): "a", b.worker_name(): "b"}
    assert set(ran.values()) == set(names), (ran, names)  # both hosts ran some
    print(f"\nsessions per host: {sorted(names[w] for w in ran.values())}", flush=True)
    for sid in sessions.values():
        wait_for(lambda s=sid: not (a.leftovers(s) or b.leftovers(s)), 30, what="cleaned up")


def test_a_lost_hosts_session_is_ended_elsewhere_and_its_leftovers_go_when_it_returns(cluster):
    c = cluster
    a, b = c.hosts
    # Only host b may take the session: a's worker waits out of the way (an idle warm stop).
    a.stop("worker")
    c.service.anthropic.script([Text("too late", delay=300)])
    number = c.service.new_issue("Host lost")
    session_id = c.ask(number)
    wait_for(
        lambda: b.running(session_id) and c.service.anthropic.main_requests(),
        120,
        what="the session mid-turn on host b",
    )
    a.start("worker")
    assert c.job(session_id).worker_name == b.worker_name()
    workspace = b.dirs(session_id)[0]

    # The host is lost: its worker, horse, gateway and egress killed, its engine down.
    lost = time.monotonic()
    b.stop_all(signal.SIGKILL)
    assert b.engine is not None
    b.engine.stop()  # it stops its containers; they stay until someone removes them
    assert "state=working" in c.service.tracking_comments(number)[0].body

    # Host a's worker finds the session abandoned once its heartbeat lapses (5 + 60 s).
    final = c.service.wait_final(number, timeout=HEARTBEAT + 60 + 6 * REAPER_INTERVAL + 120)
    figure(
        "host lost -> its session's comment interrupted by the other host", time.monotonic() - lost
    )
    assert INTERRUPTED in final.body and f"{session_id} state=failed" in final.body, final.body
    assert len(c.service.tracking_comments(number)) == 1
    wait_for(lambda: c.job(session_id).get_status() == JobStatus.FAILED, 30, what="the job failed")
    # Found abandoned by host a's RQ registry cleanup (b was gone), which ran our callback.
    assert f"{session_id} Moved to FailedJobRegistry, due to AbandonedJobError" in a.tail(
        "worker", 400
    )
    assert workspace.is_dir(), "host a's worker removed host b's workspace"

    # B's engine is back, its worker not yet. Host a's reaper, even pointed at b's workspace
    # root and b's engine and seeing the session dead, leaves b's leftovers alone.
    b.engine.start()
    assert b.containers(session_id), "host b's container should survive its engine's stop"
    assert not session_running(c.redis, c.job(session_id))
    ended: list[str] = []
    a_over_b = WorkerSettings.parse(
        REDIS_URL=c.env["REDIS_URL"], WORKSPACE_ROOT=str(b.workspaces), WORKER_HOST_ID=a.id
    )
    report = reap(a_over_b, c.redis, b.docker, interrupt=lambda job, why: ended.append(job.id))
    assert not (report.containers or report.workspaces or ended), report
    assert b.containers(session_id) and workspace.is_dir()

    # Host b comes back: its worker's start-up reap removes what its session left.
    back = time.monotonic()
    b.start_all()
    wait_for(
        lambda: not b.leftovers(session_id), 60, what="host b's reaper to remove its leftovers"
    )
    figure("host b back -> its leftovers removed", time.monotonic() - back)
    assert f"removed the leftovers of {session_id}" in b.tail("worker", 200)
    # Its comment was ended once, by host a; host b's pass did not edit it again.
    patches = [r for r in c.service.github.requests if r.method == "PATCH"]
    edits = [str((r.json or {}).get("body")) for r in patches]
    assert len([e for e in edits if session_id in e and "Interrupted" in e]) == 1, edits
    assert FINAL.search(c.service.tracking_comments(number)[0].body)
