"""Finding and removing what sessions left behind when their worker died.

A session cleans up after itself in `finally` blocks: its container, its model gateway, its
workspace directory (which holds the gateway's socket) and its tracking comment. A SIGKILL (a
cold shutdown, RQ's stop-job, the OOM killer, a lost host) skips every `finally`, and the
container, a child of dockerd rather than of the worker, keeps running; so does the gateway
when it lives in the gateway process (jobs/gateway_service.py), which the reaper asks to close
it. The reaper looks for those leftovers by name, not by memory:

* containers labelled `claudecluster.session=<session_id>` (jobs/sandbox.py);
* directories `WORKSPACE_ROOT/s-<random>/` whose `session-id` file names the session
  (jobs/workspace.py); one without that file (a crash between the two) is removed once old.

A leftover is removed unless its session is running right now on a live worker: the RQ job is
`started`, and the worker named in the job still holds it (`current_job`) and is alive. Alive
means the worker's Redis key has not expired (RQ's heartbeat; a busy worker's key outlives its
last heartbeat by `job_monitoring_interval + 60` s), has no recorded death, and, when the worker
runs on this very host (same boot, same PID namespace), its process or its work horse still
exists: a killed worker on this host is known dead at once, one elsewhere when its key expires.
A session whose job Redis does not know (another deployment on the same engine, or a job hash
past its 7-day TTL) is left alone unless its leftovers are older than `UNKNOWN_AFTER`.

For a session of a dead worker the reaper also ends the tracking comment as interrupted
(jobs/interrupted.py), which is idempotent with RQ's own abandoned-job callback.

With gVisor (`SANDBOX_RUNTIME=runsc`) a failed start can leave `runsc-sandbox`/`runsc-gofer`
processes and their containerd shim running, unknown to Docker; those are killed too once they
are older than `ORPHAN_AFTER` and their container id is unknown to the engine.

`reap()` runs at worker start and at every RQ maintenance tick (`REAPER_INTERVAL`, jobs/worker.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from app.config import WorkerSettings
from jobs.interrupted import WORKER_STOPPED, interrupt_job, retry_pending
from jobs.sandbox import LABEL
from jobs.workspace import OWNER_FILE

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"session-[A-Za-z0-9-]{1,80}")  # app.enqueue.session_id_for
WORKSPACE_PREFIX = "s-"  # jobs/workspace.py: mkdtemp(prefix="s-"), the owner in OWNER_FILE
UNKNOWN_AFTER = 24 * 3600  # seconds: leftovers of a job this Redis does not know
# Seconds after which a runsc process unknown to Docker, or a workspace without an owner file,
# is a leftover rather than something being set up right now.
ORPHAN_AFTER = 120
# Fields the SessionWorker adds to its RQ worker hash (jobs/worker.py).
HOST_FIELD = "claudecluster_host"
PID_FIELD = "claudecluster_pid"
HORSE_FIELD = "claudecluster_horse"


@dataclass
class ReapReport:
    containers: list[str] = field(default_factory=list)  # sessions whose containers were removed
    workspaces: list[str] = field(default_factory=list)  # directories removed
    interrupted: list[str] = field(default_factory=list)  # tracking comments ended here
    live: list[str] = field(default_factory=list)  # sessions left alone: running on a live worker
    unknown: list[str] = field(default_factory=list)  # not this Redis's: left alone
    processes: list[int] = field(default_factory=list)  # orphaned runsc processes killed
    errors: list[str] = field(default_factory=list)

    @property
    def removed(self) -> bool:
        return bool(self.containers or self.workspaces or self.processes)

    def summary(self) -> str:
        return (
            f"{len(self.containers)} container(s), {len(self.workspaces)} workspace(s), "
            f"{len(self.processes)} orphaned process(es) removed; "
            f"{len(self.interrupted)} comment(s) ended; kept {len(self.live)} live session(s)"
        )


# -- who is alive -------------------------------------------------------------------------


def process_token(pid: int) -> str:
    """`pid:start-time`, which names one process even after its pid is reused; '' if gone."""
    start = _process_start(pid)
    return f"{pid}:{start}" if start else ""


def _process_start(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return ""
    # The command name may hold spaces and parentheses: count fields after the last ')'.
    rest = stat.rsplit(")", 1)[-1].split()
    if len(rest) < 20 or rest[0] in ("Z", "X"):  # a zombie is dead, only not yet waited for
        return ""
    return rest[19]  # field 22, starttime


def token_alive(token: str, proc: Path = Path("/proc")) -> bool:
    pid, _, start = token.partition(":")
    return bool(pid.isdigit() and start and _process_start(int(pid), proc) == start)


def host_identity() -> str:
    """This host and PID namespace: where a worker's pid can be checked directly; '' if unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}|{boot}|{pidns}"


def worker_alive(redis: Redis, worker_name: str, job_id: str, here: str | None = None) -> bool:
    """Whether `worker_name` is alive and still running `job_id`."""
    if not worker_name:
        return False
    data = {
        k.decode(): v.decode()
        for k, v in redis.hgetall(Worker.redis_worker_namespace_prefix + worker_name).items()
    }
    if not data or data.get("death"):
        return False  # the key expired with the heartbeat, or the worker registered its death
    if data.get("current_job") != job_id:
        return False  # the worker moved on: this job was left behind
    here = host_identity() if here is None else here
    if here and data.get(HOST_FIELD) == here:
        return any(token_alive(data[f]) for f in (PID_FIELD, HORSE_FIELD) if data.get(f))
    return True  # another host: its heartbeat is all there is to go on


def session_running(redis: Redis, job: Job, here: str | None = None) -> bool:
    return job.get_status(refresh=True) == JobStatus.STARTED and worker_alive(
        redis, job.worker_name or "", job.id, here
    )


# -- the leftovers ------------------------------------------------------------------------


def workspace_dirs(root: Path) -> dict[str, list[Path]]:
    """Workspace directories by the session named in their owner file ('' when it has none)."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return found
    for path in entries:
        if not path.name.startswith(WORKSPACE_PREFIX) or path.is_symlink() or not path.is_dir():
            continue
        try:
            owner = (path / OWNER_FILE).read_text().strip()
        except OSError:
            owner = ""
        found.setdefault(owner if SESSION_ID.fullmatch(owner) else "", []).append(path)
    return found


def session_containers(docker_client) -> dict[str, list]:
    found: dict[str, list] = {}
    for container in docker_client.containers.list(all=True, filters={"label": LABEL}):
        session_id = (container.labels or {}).get(LABEL)
        if session_id:
            found.setdefault(session_id, []).append(container)
    return found


def _container_age(container) -> float:
    created = str(container.attrs.get("Created") or "")
    try:
        # Docker's RFC 3339 with nanoseconds: keep the seconds.
        stamp = datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0.0
    return time.time() - stamp.replace(tzinfo=UTC).timestamp()


def _dir_age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def remove_containers(containers: Iterable, report: ReapReport, session_id: str) -> None:
    from docker.errors import DockerException, NotFound

    for container in containers:
        try:
            container.remove(force=True)
        except NotFound:
            continue  # its session removed it meanwhile
        except DockerException as exc:
            report.errors.append(f"container of {session_id}: {exc}")
            continue
        if session_id not in report.containers:
            report.containers.append(session_id)


def remove_dirs(paths: Iterable[Path], report: ReapReport) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            report.errors.append(f"workspace {path.name} could not be removed")
        else:
            report.workspaces.append(str(path))


def close_gateway(settings: WorkerSettings, session_id: str) -> bool:
    """Ask the gateway process to close the session's model gateway (and its socket).

    With the gateway in a process of its own (jobs/gateway_service.py), a session's gateway
    outlives its killed horse until the session's deadline; closing it is harmless when it
    is closed already. Without that process the gateway lived in the horse and died with it.
    """
    try:
        from jobs import gateway_service
    except ImportError:
        return False
    control = getattr(settings, "gateway_socket", None)
    if control is None or not Path(control).exists():
        return False  # no gateway process on this host
    try:
        gateway_service._call(settings, {"op": "close", "session": session_id}, wait=1.0)
    except Exception as exc:  # not running, or refusing: its own sweep closes it later
        log.info("reaper: gateway of %s not closed (%s)", session_id, exc)
        return False
    return True


def reap_session(settings: WorkerSettings, docker_client, session_id: str,
                 report: ReapReport | None = None) -> ReapReport:  # fmt: skip
    """Remove one session's container and workspace, unconditionally: its horse is known dead."""
    report = report or ReapReport()
    if docker_client is not None:
        try:
            containers = docker_client.containers.list(
                all=True, filters={"label": f"{LABEL}={session_id}"}
            )
        except Exception as exc:  # the engine is away: the next tick tries again
            report.errors.append(f"docker: {exc}")
        else:
            remove_containers(containers, report, session_id)
    close_gateway(settings, session_id)
    remove_dirs(workspace_dirs(settings.workspace_root).get(session_id, []), report)
    return report


# -- the pass -----------------------------------------------------------------------------


def reap(settings: WorkerSettings, redis: Redis, docker_client, *,
         interrupt: Callable[[Job, str], object] | None = None,
         here: str | None = None) -> ReapReport:  # fmt: skip
    """One pass over this host's leftovers; never raises for a single leftover's trouble.

    `interrupt(job, why)` ends a dead session's tracking comment (default: jobs.interrupted).
    """
    report = ReapReport()
    here = host_identity() if here is None else here
    # List first, judge after: whatever exists now was made by a job that had started by now,
    # so a job seen as not running afterwards cannot be about to make it.
    containers: dict[str, list] = {}
    if docker_client is not None:
        try:
            containers = session_containers(docker_client)
        except Exception as exc:
            report.errors.append(f"docker: {exc}")
    dirs = workspace_dirs(settings.workspace_root)
    # No owner file: the worker died between making the directory and naming its owner.
    remove_dirs([p for p in dirs.pop("", []) if _dir_age(p) >= ORPHAN_AFTER], report)

    retry = None
    if interrupt is None:

        def interrupt(job: Job, why: str) -> object:
            return interrupt_job(job, redis, why, settings=settings)

        def retry() -> list[str]:
            return retry_pending(redis, settings)

    for session_id in sorted(set(containers) | set(dirs)):
        try:
            job = Job.fetch(session_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            ages = [_container_age(c) for c in containers.get(session_id, [])]
            ages += [_dir_age(p) for p in dirs.get(session_id, [])]
            if min(ages, default=0.0) < UNKNOWN_AFTER:
                report.unknown.append(session_id)
                continue
            job = None
        except Exception as exc:  # Redis away, or a hash that is not a job: judge nothing
            report.errors.append(f"{session_id}: {type(exc).__name__}: {exc}")
            continue
        if job is not None and session_running(redis, job, here):
            report.live.append(session_id)
            continue
        status = job.get_status(refresh=False) if job is not None else None
        # Container first: it has the workspace mounted and the gateway's socket open.
        remove_containers(containers.get(session_id, []), report, session_id)
        close_gateway(settings, session_id)
        remove_dirs(dirs.get(session_id, []), report)
        log.warning("reaper: removed the leftovers of %s (job %s)", session_id, status or "unknown")
        if job is not None and status in (JobStatus.STARTED, JobStatus.FAILED, JobStatus.STOPPED):
            try:
                if interrupt(job, WORKER_STOPPED) == "edited":
                    report.interrupted.append(session_id)
            except Exception as exc:
                report.errors.append(f"{session_id}: comment: {type(exc).__name__}: {exc}")

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
        start = _process_start(int(entry.name), proc)
        if not start:
            continue
        found.append((int(entry.name), container, uptime - int(start) / ticks))
    return found


def _flag(args: list[str], name: str) -> str:
    at = args.index(name) + 1 if name in args else len(args)
    return args[at] if at < len(args) else ""


def kill_runsc_orphans(docker_client, proc: Path = Path("/proc"), older_than: float = ORPHAN_AFTER,
                       kill: Callable[[int, int], None] = os.kill) -> list[int]:  # fmt: skip
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
            log.warning("reaper: killed pid %s, a runsc leftover of container %s", pid,
                        container[:12])  # fmt: skip
    return killed
