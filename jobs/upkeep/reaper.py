"""Finding and removing what sessions left behind when their worker died.

A session cleans up after itself in `finally` blocks: its container, its model gateway, its
workspace directory (which holds the gateway's socket) and its tracking comment. A SIGKILL (a
cold shutdown, RQ's stop-job, the OOM killer, a lost host) skips every `finally`, and the
container, a child of dockerd rather than of the worker, keeps running; so does the gateway
when it lives in the gateway process (jobs/gateway/service.py), which the reaper asks to close
it. The reaper looks for those leftovers by name, not by memory:

* containers labelled `claudecluster.session=<session_id>` (jobs/sandbox/container.py);
* directories `WORKSPACE_ROOT/s-<random>/` whose `session-id` file names the session
  (jobs/sandbox/workspace.py); one without that file (a crash between the two) is removed once old;
* warm sandboxes a session claimed (jobs/sandbox/pool.py): the directory `p-<random>/` with its
  owner file, the container renamed `claudecluster-<session_id>`. Idle slots (no owner file)
  are the pool's, which drains and refills them; they are never a session's leftovers.

A leftover is removed unless its session is running right now on a live worker: the RQ job is
`started`, and the worker named in the job still holds it (`current_job`) and is alive. Alive
means the worker's Redis key has not expired (RQ's heartbeat; a busy worker's key outlives its
last heartbeat by `job_monitoring_interval + 60` s), has no recorded death, and, when the worker
runs on this very host (same boot, same PID namespace), its process or its work horse still
exists: a killed worker on this host is known dead at once, one elsewhere when its key expires.
A session whose job Redis does not know (another deployment on the same engine, or a job hash
past its 7-day TTL) is left alone unless its leftovers are older than `UNKNOWN_AFTER`.

For a session of a dead worker the reaper also ends the tracking comment as interrupted
(jobs/upkeep/interrupted.py), which is idempotent with RQ's own abandoned-job callback.

With gVisor (`SANDBOX_RUNTIME=runsc`) a failed start can leave `runsc-sandbox`/`runsc-gofer`
processes and their containerd shim running, unknown to Docker; those are killed too once they
are older than `ORPHAN_AFTER` and their container id is unknown to the engine.

Only this worker host's leftovers are listed: containers labelled `claudecluster.host=<id>` and
workspaces whose `host-id` file name another host are that host's (jobs/sandbox/host.py).

`reap()` runs at worker start and at every RQ maintenance tick (`REAPER_INTERVAL`, jobs/worker.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.common.settings import WorkerSettings
from jobs.sandbox.host import HostUnknown, worker_host
from jobs.upkeep.interrupted import WORKER_STOPPED, interrupt_job, retry_pending
from jobs.upkeep.leftovers import (
    ReapReport,
    close_gateway,
    container_age,
    dir_age,
    host_identity,
    process_start,
    remove_containers,
    remove_dirs,
    session_containers,
    session_running,
    workspace_dirs,
)

log = logging.getLogger(__name__)

UNKNOWN_AFTER = 24 * 3600  # seconds: leftovers of a job this Redis does not know
# Seconds after which a runsc process unknown to Docker, or a workspace without an owner file,
# is a leftover rather than something being set up right now.
ORPHAN_AFTER = 120


# -- the pass -----------------------------------------------------------------------------


def reap(
    settings: WorkerSettings,
    redis: Redis,
    docker_client,
    *,
    interrupt: Callable[[Job, str], object] | None = None,
    here: str | None = None,
) -> ReapReport:
    """One pass over this host's leftovers; never raises for a single leftover's trouble.

    `interrupt(job, why)` ends a dead session's tracking comment (default: jobs.upkeep.interrupted).
    """
    report = ReapReport()
    here = host_identity() if here is None else here
    try:
        host = worker_host(settings, docker_client)
    except HostUnknown as exc:  # whose leftovers are whose cannot be told: the next pass
        report.errors.append(str(exc))
        leftovers = _Leftovers({}, {})
    else:
        # List first, judge after: whatever exists now was made by a job that had started by
        # now, so a job seen as not running afterwards cannot be about to make it.
        leftovers = _Leftovers.listed(settings, docker_client, host, report)
    retry = None
    if interrupt is None:

        def interrupt(job: Job, why: str) -> object:
            return interrupt_job(job, redis, why, settings=settings)

        def retry() -> list[str]:
            return retry_pending(redis, settings)

    for session_id in leftovers.sessions():
        gone, job = _judge(session_id, leftovers, redis, here, report)
        if gone:
            _remove(session_id, job, leftovers, settings, interrupt, report)
    if retry is not None:
        try:
            report.interrupted += retry()
        except Exception as exc:
            report.errors.append(f"pending comments: {type(exc).__name__}: {exc}")
    if settings.sandbox_runtime == "runsc" and docker_client is not None:
        with contextlib.suppress(Exception):
            report.processes += kill_runsc_orphans(docker_client)
    if report.removed or report.errors:
        log.warning("reaper: %s; errors: %s", report.summary(), report.errors or "none")
    elif report.live or report.interrupted:
        log.info("reaper: %s", report.summary())
    return report


@dataclass
class _Leftovers:
    """What the sessions left on this host, by session id."""

    containers: dict[str, list]
    dirs: dict[str, list[Path]]

    @classmethod
    def listed(
        cls, settings: WorkerSettings, docker_client, host: str, report: ReapReport
    ) -> _Leftovers:
        """Worker host `host`'s leftovers only: another host's are for its own reaper, which
        alone can tell whether they are still in use (docs/hosts.md)."""
        containers: dict[str, list] = {}
        if docker_client is not None:
            try:
                containers = session_containers(docker_client, host, settings.workspace_root)
            except Exception as exc:
                report.errors.append(f"docker: {exc}")
        dirs = workspace_dirs(settings.workspace_root, host)
        # No owner file: the worker died between making the directory and naming its owner.
        remove_dirs([p for p in dirs.pop("", []) if dir_age(p) >= ORPHAN_AFTER], report)
        return cls(containers, dirs)

    def sessions(self) -> list[str]:
        return sorted(set(self.containers) | set(self.dirs))

    def youngest(self, session_id: str) -> float:
        """The age in seconds of the session's youngest leftover."""
        ages = [container_age(c) for c in self.containers.get(session_id, [])]
        ages += [dir_age(p) for p in self.dirs.get(session_id, [])]
        return min(ages, default=0.0)


def _judge(
    session_id: str, leftovers: _Leftovers, redis: Redis, here: str, report: ReapReport
) -> tuple[bool, Job | None]:
    """Whether the session's leftovers go, and its job when Redis knows it; a session whose
    leftovers stay is counted in `report` as live, unknown or in error."""
    try:
        job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        if leftovers.youngest(session_id) < UNKNOWN_AFTER:
            report.unknown.append(session_id)
            return False, None
        return True, None
    except Exception as exc:  # Redis away, or a hash that is not a job: judge nothing
        report.errors.append(f"{session_id}: {type(exc).__name__}: {exc}")
        return False, None
    if session_running(redis, job, here):
        report.live.append(session_id)
        return False, job
    return True, job


def _remove(
    session_id: str,
    job: Job | None,
    leftovers: _Leftovers,
    settings: WorkerSettings,
    interrupt: Callable[[Job, str], object],
    report: ReapReport,
) -> None:
    status = job.get_status(refresh=False) if job is not None else None
    # Container first: it has the workspace mounted and the gateway's socket open.
    remove_containers(leftovers.containers.get(session_id, []), report, session_id)
    close_gateway(settings, session_id)
    remove_dirs(leftovers.dirs.get(session_id, []), report)
    log.warning("reaper: removed the leftovers of %s (job %s)", session_id, status or "unknown")
    if job is not None and status in (JobStatus.STARTED, JobStatus.FAILED, JobStatus.STOPPED):
        try:
            if interrupt(job, WORKER_STOPPED) == "edited":
                report.interrupted.append(session_id)
        except Exception as exc:
            report.errors.append(f"{session_id}: comment: {type(exc).__name__}: {exc}")


# -- gVisor orphans -----------------------------------------------------------------------

_RUNSC = ("runsc-sandbox", "runsc-gofer")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def runsc_processes(proc: Path = Path("/proc")) -> list[tuple[int, str, float]]:
    """(pid, container id, age in seconds) of runsc and shim processes of Docker's containers."""
    found = []
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError):
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in argv if a]
        if not args:
            continue
        name = os.path.basename(args[0])
        container = ""
        if name in _RUNSC:
            # `--log=/…/moby/<id>/log.json`, and the id is the last argument too.
            for arg in args:
                if "/moby/" in arg and (m := _CONTAINER_ID.search(arg)):
                    container = m.group(0)
        elif name == "containerd-shim-runc-v2" and _flag(args, "-namespace") == "moby":
            container = _flag(args, "-id") if _CONTAINER_ID.fullmatch(_flag(args, "-id")) else ""
        if not container:
            continue
        start = process_start(int(entry.name), proc)
        if not start:
            continue
        found.append((int(entry.name), container, uptime - int(start) / ticks))
    return found


def _flag(args: list[str], name: str) -> str:
    at = args.index(name) + 1 if name in args else len(args)
    return args[at] if at < len(args) else ""


def kill_runsc_orphans(
    docker_client,
    proc: Path = Path("/proc"),
    older_than: float = ORPHAN_AFTER,
    kill: Callable[[int, int], None] = os.kill,
) -> list[int]:
    """Kill runsc processes (and their shims) of containers the engine no longer knows.

    `proc` and `kill` are the host's unless a test hands in a /proc of its own making.
    """
    candidates = [p for p in runsc_processes(proc) if p[2] >= older_than]
    if not candidates:
        return []
    # Only after a successful listing: an empty answer must never mean "all are orphans".
    known = {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)}
    killed = []
    for pid, container, _age in candidates:
        if container in known:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
            killed.append(pid)
            log.warning(
                "reaper: killed pid %s, a runsc leftover of container %s", pid, container[:12]
            )
    return killed
