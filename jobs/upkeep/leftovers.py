"""What a session leaves behind when its worker dies, who is still alive, and removing it.

The reaper's pass (jobs/upkeep/reaper.py) and the interrupted-session paths
(jobs/upkeep/interrupted.py) both judge and remove with these; neither imports the other's
decisions.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from rq import Worker
from rq.job import Job, JobStatus

from jobs.common.settings import WorkerSettings
from jobs.sandbox.container import LABEL
from jobs.sandbox.host import HOST_FILE, HOST_LABEL, HostUnknown, owned_here, worker_host
from jobs.sandbox.pool import SLOT_PREFIX, claimed_containers
from jobs.sandbox.workspace import OWNER_FILE

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"session-[A-Za-z0-9-]{1,80}")  # jobs.common.queue.session_id_for
WORKSPACE_PREFIX = "s-"  # jobs/sandbox/workspace.py: mkdtemp(prefix="s-"), the owner in OWNER_FILE
# Fields the SessionWorker adds to its RQ worker hash (jobs/worker.py).
HOST_FIELD = "claudecluster_host"
PID_FIELD = "claudecluster_pid"
HORSE_FIELD = "claudecluster_horse"
WORKER_HOST_FIELD = "claudecluster_worker_host"  # WORKER_HOST_ID or the engine's (sandbox/host)


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
    start = process_start(pid)
    return f"{pid}:{start}" if start else ""


def process_start(pid: int, proc: Path = Path("/proc")) -> str:
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
    return bool(pid.isdigit() and start and process_start(int(pid), proc) == start)


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


def workspace_dirs(root: Path, host: str) -> dict[str, list[Path]]:
    """Worker host `host`'s workspace directories, by the session named in their owner file
    ('' when it has none); those another host's `host-id` file names are not listed."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return found
    for path in entries:
        slot = path.name.startswith(SLOT_PREFIX)
        if not (slot or path.name.startswith(WORKSPACE_PREFIX)):
            continue
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            recorded = (path / HOST_FILE).read_text().strip()
        except OSError:
            recorded = ""
        if not owned_here(host, recorded):
            continue
        try:
            owner = (path / OWNER_FILE).read_text().strip()
        except FileNotFoundError:
            if slot:
                continue  # an idle warm sandbox's: the pool's, no session's leftover
            owner = ""
        except OSError:
            owner = ""
        found.setdefault(owner if SESSION_ID.fullmatch(owner) else "", []).append(path)
    return found


def session_containers(
    docker_client, host: str, root: Path, session_id: str | None = None
) -> dict[str, list]:
    """Worker host `host`'s sandbox containers on this engine, by session (only `session_id`'s
    when given): fresh ones by their label, warm ones (claimed from the host's pool of the
    workspaces under `root`) by their name."""
    found: dict[str, list] = {}
    label = LABEL if session_id is None else f"{LABEL}={session_id}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        labels = container.labels or {}
        session_id = labels.get(LABEL)
        if session_id and owned_here(host, labels.get(HOST_LABEL)):
            found.setdefault(session_id, []).append(container)
    for claimer, containers in claimed_containers(docker_client, host, root).items():
        if SESSION_ID.fullmatch(claimer) and session_id in (None, claimer):
            found.setdefault(claimer, []).extend(containers)
    return found


def container_age(container) -> float:
    created = str(container.attrs.get("Created") or "")
    try:
        # Docker's RFC 3339 with nanoseconds: keep the seconds.
        stamp = datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0.0
    return time.time() - stamp.replace(tzinfo=UTC).timestamp()


def dir_age(path: Path) -> float:
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

    With the gateway in a process of its own (jobs/gateway/service.py), a session's gateway
    outlives its killed horse until the session's deadline; closing it is harmless when it
    is closed already. Without that process the gateway lived in the horse and died with it.
    """
    try:
        from jobs.gateway import service as gateway_service
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


def reap_session(
    settings: WorkerSettings, docker_client, session_id: str, report: ReapReport | None = None
) -> ReapReport:
    """Remove one session's container and workspace on this worker host, unconditionally: its
    horse is known dead. A session of another host is left to that host's reaper."""
    report = report or ReapReport()
    try:
        host = worker_host(settings, docker_client)
    except HostUnknown as exc:  # whose leftovers are whose cannot be told: the next tick
        report.errors.append(str(exc))
        return report
    if docker_client is not None:
        try:
            ours = session_containers(docker_client, host, settings.workspace_root, session_id)
        except Exception as exc:  # the engine is away: the next tick tries again
            report.errors.append(f"docker: {exc}")
        else:
            remove_containers(ours.get(session_id, []), report, session_id)
    close_gateway(settings, session_id)
    remove_dirs(workspace_dirs(settings.workspace_root, host).get(session_id, []), report)
    return report
