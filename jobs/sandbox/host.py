"""Which worker host this is, as its sandbox containers and workspaces say (docs/hosts.md).

Several worker hosts may share one Redis, and even one workspace directory or one engine. Each
host's reaper must remove only what its own sessions left, because only that host can tell
whether they still run: so every sandbox container carries the label `claudecluster.host=<id>`
and every workspace a `host-id` file beside its `session-id`. The id is WORKER_HOST_ID, or by
default the Docker engine's own (`engine_id`, from `docker info`): containers belong to an
engine, and what it is made of survives the engine's restarts.
"""

from __future__ import annotations

import hashlib
import os
import re

import docker

from jobs.common.settings import HOST_ID, WorkerSettings

HOST_LABEL = "claudecluster.host"
HOST_FILE = "host-id"  # in each workspace root, written before its owner file

_engine_ids: dict[str, str] = {}  # DOCKER_HOST -> the engine's ID, asked once per process


class HostUnknown(RuntimeError):
    """No WORKER_HOST_ID, and the Docker engine could not be asked for its ID."""


def worker_host(settings: WorkerSettings, client=None) -> str:
    """This worker host's id: WORKER_HOST_ID, else the ID of the engine (`client`'s, or the
    environment's: DOCKER_HOST). Raises HostUnknown when the engine cannot say."""
    if settings.worker_host_id:
        return settings.worker_host_id
    if client is not None:
        return engine_id(client)
    # A forked work horse inherits the worker's answer: sessions need not ask the engine.
    where = os.environ.get("DOCKER_HOST", "")
    if where not in _engine_ids:
        try:
            local = docker.from_env(timeout=10)
        except docker.errors.DockerException as exc:
            raise HostUnknown(f"no Docker engine to ask for its ID ({exc})") from None
        try:
            _engine_ids[where] = engine_id(local)
        finally:
            local.close()
    return _engine_ids[where]


def engine_id(client) -> str:
    """`<engine host name>-<12 hex digits>`, from the engine's ID, host name and data root.

    The ID alone is not enough: Docker derives it from /etc/docker/key.json, which a second
    dockerd on the same machine (or a cloned machine image) shares; the data root tells two
    engines on one machine apart, the host name two cloned machines.
    """
    try:
        info = client.info()
    except Exception as exc:  # the engine is away, or not an engine at all
        raise HostUnknown(f"the Docker engine did not say its ID ({type(exc).__name__})") from None
    engine, name = str(info.get("ID") or ""), str(info.get("Name") or "")
    if not engine:
        raise HostUnknown("the Docker engine has no ID: set WORKER_HOST_ID")
    digest = hashlib.sha256(f"{engine}|{name}|{info.get('DockerRootDir') or ''}".encode())
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")[:100] or "engine"
    value = f"{readable}-{digest.hexdigest()[:12]}"
    if not HOST_ID.fullmatch(value):
        raise HostUnknown(f"the engine's name {name[:40]!r} is not usable: set WORKER_HOST_ID")
    return value


def owned_here(host: str, recorded: str | None) -> bool:
    """Whether a leftover recording `recorded` as its host is this host's. One recording none
    predates host ids: it is on this host's engine or in its workspace root, so it is counted
    as this host's (share a workspace root only between hosts that all record theirs)."""
    return not recorded or recorded == host
