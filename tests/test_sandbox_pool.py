"""Warm sandboxes (jobs/sandbox/pool.py) on the real engine, the real agent image and CLI, and a
real Redis for the reaper: what an idle slot holds, claims (once each, also between processes),
refills, draining on an image change, falling back to a fresh container, and the reaper's rules.
"""

from __future__ import annotations

import io
import multiprocessing
import uuid
from pathlib import Path

import docker
import pytest
from redis import Redis
from rq.job import Job, JobStatus

from jobs.common.settings import ConfigError, WorkerSettings
from jobs.gateway.backends import AnthropicApiKey
from jobs.gateway.proxy import ModelGateway
from jobs.sandbox.container import (
    CONTROL_DIR,
    POOL_ROLE,
    PROJECTS_DIR,
    RELAY_URL,
    ROLE_LABEL,
    WORKSPACE,
    Limits,
    Sandbox,
    SandboxJob,
)
from jobs.sandbox.host import HOST_FILE, HOST_LABEL, engine_id
from jobs.sandbox.pool import POOL_LABEL, Pool, PoolKeeper, claim, claimed_name, pool_key
from jobs.sandbox.workspace import OWNER_FILE
from jobs.upkeep.leftovers import reap_session
from jobs.upkeep.reaper import reap
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.support import wait_for

MODEL_KEY = f"pool-test-key-{uuid.uuid4().hex}"  # made at run time, never a key-shaped literal


@pytest.fixture
def root(tmp_path, agent_image):
    """A workspace root of its own (so a pool of its own); its containers go with the test."""
    yield tmp_path / "workspaces"
    client = docker.from_env()
    label = f"{POOL_LABEL}={pool_key(engine_id(client), tmp_path / 'workspaces')}"
    for c in client.containers.list(all=True, filters={"label": label}):
        c.remove(force=True)


def pool_settings(root: Path, image: str, size: int = 1, **values: str) -> WorkerSettings:
    return WorkerSettings.parse(
        AGENT_IMAGE=image, WORKSPACE_ROOT=str(root), SANDBOX_POOL_SIZE=str(size), **values
    )


def idle(pool: Pool) -> list:
    return [
        c
        for c in pool.containers()
        if not (pool.root / c.labels["claudecluster.slot"] / OWNER_FILE).exists()
    ]


def test_the_pool_size_is_checked_at_start_up():
    assert WorkerSettings.parse().sandbox_pool_size == 1
    assert WorkerSettings.parse(SANDBOX_POOL_SIZE="0").sandbox_pool_size == 0
    for bad in ("-1", "17", "two"):
        with pytest.raises(ConfigError, match="SANDBOX_POOL_SIZE: "):
            WorkerSettings.parse(SANDBOX_POOL_SIZE=bad)


def test_an_idle_slot_holds_no_secret_no_repository_and_no_gateway(root, agent_image):
    pool = Pool(pool_settings(root, agent_image, SANDBOX_MEMORY="512m"))
    assert pool.fill() == 1
    (container,) = pool.containers()
    slot = root / container.labels["claudecluster.slot"]
    attrs = container.attrs
    image_env = docker.from_env().images.get(agent_image).attrs["Config"]["Env"]
    # Nothing in its environment but the image's own; no key of any kind in its definition.
    assert sorted(attrs["Config"]["Env"]) == sorted(image_env)
    assert "ANTHROPIC" not in str(attrs) and "ccgw-" not in str(attrs)
    assert container.labels[ROLE_LABEL] == POOL_ROLE
    # Its host's, like a fresh one: only this host's pool and reaper touch it.
    assert container.labels[HOST_LABEL] == engine_id(docker.from_env())
    assert (slot / HOST_FILE).read_text() == container.labels[HOST_LABEL]
    # Its mounts: the slot's own empty tree, control and conversation dirs, nothing else.
    mounts = {m["Destination"]: m["Source"] for m in attrs["Mounts"]}
    conversation = slot / "conversation"
    assert mounts == {
        WORKSPACE: str(slot / "tree"),
        CONTROL_DIR: str(slot / "control"),
        PROJECTS_DIR: str(conversation),
    }
    for path in (slot / "tree", slot / "control", conversation):
        assert not list(path.iterdir())
    assert not (slot / OWNER_FILE).exists()
    # The same restrictions as a fresh sandbox: every host option equal but the mounts' sources.
    fresh = Sandbox(pool.settings).create("pool-compare", slot / "tree", slot / "control", ["true"])
    try:
        ours, theirs = dict(attrs["HostConfig"]), dict(fresh.attrs["HostConfig"])
        assert ours.pop("Binds") == theirs.pop("Binds")
        assert ours == theirs
        assert (
            ours["ReadonlyRootfs"] and ours["CapDrop"] == ["ALL"] and ours["NetworkMode"] == "none"
        )
    finally:
        fresh.remove(force=True)
    # Only a waiting process runs in it (under init), and it costs little memory.
    code, out = container.exec_run(["bash", "-c", "cat /proc/[0-9]*/comm"], user="1000:1000")
    assert code == 0 and sorted(set(out.decode().split())) == ["cat", "docker-init", "tail"]
    (used,) = pool.idle_memory()
    print(f"an idle slot uses {used / 2**20:.1f} MiB")
    assert 0 < used < 16 << 20


def _claim_in_a_process(args) -> str:
    settings, session_id = args
    found = Pool(settings).claim(session_id)
    return str(found or "")


def test_each_slot_is_claimed_once_even_by_concurrent_horses_and_refilled(root, agent_image):
    settings = pool_settings(root, agent_image, size=2)
    pool = Pool(settings)
    assert pool.fill() == 2
    sessions = [f"session-claim-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    with multiprocessing.get_context("fork").Pool(6) as workers:
        claimed = workers.map(_claim_in_a_process, [(settings, s) for s in sessions])
    won = {s: Path(p) for s, p in zip(sessions, claimed, strict=True) if p}
    assert len(won) == 2 and len(set(won.values())) == 2, claimed
    for session_id, slot in won.items():
        assert (slot / OWNER_FILE).read_text() == session_id
        container = docker.from_env().containers.get((slot / "slot-container").read_text())
        assert container.name == claimed_name(session_id)
    assert claim(settings, "session-late") is None  # none idle: that session starts cold
    # Refilled; the claimed slots are their sessions', never drained nor reused.
    assert pool.fill() == 2
    assert len(pool.containers()) == 4 and len(idle(pool)) == 2
    assert pool.fill() == 0
    assert all(slot.is_dir() for slot in won.values())


def run_job(settings: WorkerSettings, tree: Path, control: Path, session_id: str, turns, **job):
    with AnthropicStandIn(expected_api_key=MODEL_KEY) as api:
        api.script(turns)
        with ModelGateway(control / "gateway.sock", AnthropicApiKey(api.url, MODEL_KEY)) as gw:
            sandbox_job = SandboxJob(
                session_id=session_id,
                tree=tree,
                control=control,
                model_env=gw.backend.cli_env(RELAY_URL, gw.session_key),
                prompt="Follow the script.",
                limits=Limits(timeout=120, max_turns=8),
                **job,
            )
            return Sandbox(settings).run(sandbox_job), api


def test_a_claimed_slot_runs_the_cli_once_and_goes(root, agent_image):
    settings = pool_settings(root, agent_image, CLAUDE_MAX_RETRIES="0")
    pool = Pool(settings)
    pool.fill()
    slot = pool.claim("session-warm-run")
    container_id = (slot / "slot-container").read_text()
    (slot / "tree" / "README.md").write_text("# warm\n")
    run, api = run_job(
        settings,
        slot / "tree",
        slot / "control",
        "session-warm-run",
        [
            ToolUse("Bash", {"command": "cat README.md; id -u; pwd; echo made > out.txt"}),
            Text("ok"),
        ],
    )
    assert run.warm and run.exit_code == 0 and run.outcome.result == "ok", run.stderr_tail
    assert run.ready_seconds > 0
    result = str(api.main_requests()[-1].tool_results()[0]["content"])
    assert "# warm" in result and "1000" in result and "/workspace" in result
    assert (slot / "tree" / "out.txt").read_text() == "made\n"
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(container_id)  # used once, removed
    # The exit status comes from the exec: the repository's failing setup is the entrypoint's 3.
    pool.fill()
    slot = pool.claim("session-warm-setup")
    run, _ = run_job(
        settings,
        slot / "tree",
        slot / "control",
        "session-warm-setup",
        [Text("never asked")],
        setup=("echo no such tool >&2; exit 7",),
    )
    assert run.warm and run.exit_code == 3 and "no such tool" in run.outcome.setup_failed


def test_slots_of_an_older_image_are_drained_and_a_stale_claim_runs_cold(root, agent_image):
    client = docker.from_env()
    tag = f"claudecluster-wtpool/agent:{uuid.uuid4().hex[:8]}"
    client.images.get(agent_image).tag(tag)
    try:
        settings = pool_settings(root, tag, CLAUDE_MAX_RETRIES="0")
        pool = Pool(settings)
        pool.fill()
        (old,) = pool.containers()
        stale = pool.claim("session-stale")
        pool.fill()
        (kept,) = idle(pool)
        # The image is rebuilt under the same tag.
        dockerfile = f"FROM {agent_image}\nLABEL claudecluster.test=rebuilt\n".encode()
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
        assert pool.fill() == 1
        (fresh,) = idle(pool)
        assert fresh.id != kept.id and fresh.image.id == client.images.get(tag).id
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(kept.id)
        # The slot claimed before the rebuild: its session runs in a fresh container instead.
        run, _ = run_job(settings, stale / "tree", stale / "control", "session-stale", [Text("hi")])
        assert not run.warm and run.exit_code == 0 and run.outcome.result == "hi"
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(old.id)
    finally:
        for c in client.containers.list(all=True, filters={"ancestor": tag}):
            c.remove(force=True)
        client.images.remove(tag, force=True)


def test_an_empty_or_disabled_pool_means_cold_sandboxes_and_zero_drains(root, agent_image):
    assert claim(pool_settings(root, agent_image), "session-empty") is None  # nothing filled
    assert claim(pool_settings(root, agent_image, size=0), "session-off") is None
    pool = Pool(pool_settings(root, agent_image, size=2))
    pool.fill()
    assert Pool(pool_settings(root, agent_image, size=1)).fill() == 0
    assert len(pool.containers()) == 1
    Pool(pool_settings(root, agent_image, size=0)).fill()
    assert not pool.containers() and not list(root.glob("p-*"))


def test_a_crashed_workers_slots_are_reused_or_removed(root, agent_image):
    settings = pool_settings(root, agent_image)
    Pool(settings).fill()
    (left,) = Pool(settings).containers()
    # A crash mid-creation (a directory, no container) and a container whose slot dir is gone.
    (root / "p-halfmade" / "tree").mkdir(parents=True)
    orphan = Pool(pool_settings(root, agent_image, size=2))
    orphan.fill()
    lost = next(c for c in orphan.containers() if c.id != left.id)
    for path in sorted((root / lost.labels["claudecluster.slot"]).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / lost.labels["claudecluster.slot"]).rmdir()
    # The restarted worker's pool: the idle slot is as good as new and kept; the rest goes.
    assert Pool(settings).fill() == 0
    assert [c.id for c in Pool(settings).containers()] == [left.id]
    assert not (root / "p-halfmade").exists()


def test_the_reaper_keeps_idle_slots_and_removes_a_dead_sessions_claimed_one(
    root, agent_image, redis_url
):
    redis = Redis.from_url(redis_url)
    settings = pool_settings(root, agent_image, size=2, REDIS_URL=redis_url)
    pool = Pool(settings)
    pool.fill()
    dead, killed = "session-reaped-dead", "session-reaped-killed"
    dead_slot, killed_slot = pool.claim(dead), pool.claim(killed)
    pool.fill()
    idle_ids = {c.id for c in idle(pool)}
    # A killed horse's session: its claimed slot goes at once, container and directory.
    killed_container = (killed_slot / "slot-container").read_text()
    reap_session(settings, docker.from_env(), killed)
    assert not killed_slot.exists()
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(killed_container)
    # A session whose job failed: the reaper's pass removes its slot, and only that.
    job = Job.create(
        "jobs.session.pipeline.run_session", id=dead, connection=redis, serializer="json"
    )
    job.save()
    job.set_status(JobStatus.FAILED)
    report = reap(settings, redis, docker.from_env(), interrupt=lambda j, why: None, here="test")
    assert dead in report.containers and str(dead_slot) in report.workspaces, report
    assert not dead_slot.exists()
    assert {c.id for c in pool.containers()} == idle_ids  # idle slots are not leftovers
    assert all((root / c.labels["claudecluster.slot"]).is_dir() for c in pool.containers())


def test_the_keeper_refills_in_the_background_and_drains_when_it_stops(root, agent_image):
    settings = pool_settings(root, agent_image)
    pool = Pool(settings)
    keeper = PoolKeeper(settings, interval=0.2).start()
    try:
        first = wait_for(lambda: idle(pool), 60, what="the first slot")[0]
        slot = pool.claim("session-kept")
        second = wait_for(lambda: idle(pool), 60, what="the refill")[0]
        assert second.id != first.id
    finally:
        keeper.stop()
    # Its idle slots went with it; the claimed one is still its session's.
    assert [c.id for c in pool.containers()] == [first.id] and slot.is_dir()
