"""The floors a session's phases are measured against, taken in the same run on the same parts.

* `docker run … true` with the sandbox's flags (`--network none --read-only --cap-drop ALL`,
  the session's runtime): what starting any container costs;
* a plain-git clone and a fetch of the session's repository from the same GitHub stand-in: what
  getting the repository costs without our code around it;
* the CLI's start in an idle container: from `docker exec` of the image's entrypoint with the CLI
  (which starts the gateway relay first, as in a session) to its first request to a model
  stand-in, reached through a Unix socket bind-mounted as the gateway's would be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from jobs.sandbox.container import sandbox_user
from tests.standins.anthropic import AnthropicStandIn, Text
from tests.support import wait_for

BENCH_LABEL = "claudecluster.bench"  # on the floors' own containers, never claudecluster.role
CLI = [
    "claude",
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--max-turns",
    "3",
    "--dangerously-skip-permissions",
    "--setting-sources=user",
    "--strict-mcp-config",
]


@dataclass(frozen=True)
class FloorRun:
    image: str
    runtime: str
    clone_url: str
    token: str
    rounds: int


def container_floor(run: FloorRun) -> list[float]:
    client = docker.from_env()
    times = []
    for n in range(run.rounds):
        began = time.time()
        client.containers.run(
            run.image,
            ["true"],
            name=f"bench-session-true-{os.getpid()}-{n}",
            labels={BENCH_LABEL: "true"},
            runtime=run.runtime,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            remove=True,
        )
        times.append(time.time() - began)
    return times


def _git(home: Path, *args: str) -> None:
    # No system or global config, no hooks: the same plain git for every round.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    subprocess.run(["git", *args], check=True, env=env, capture_output=True)


def git_floors(run: FloorRun) -> tuple[list[float], list[float]]:
    """Clone, then fetch into that clone (nothing new: the negotiation alone)."""
    scheme, rest = run.clone_url.split("://", 1)
    url = f"{scheme}://x-access-token:{run.token}@{rest}"
    clones, fetches = [], []
    with tempfile.TemporaryDirectory(prefix="bench-session-git-") as tmp:
        home = Path(tmp)
        for n in range(run.rounds):
            target = home / f"clone-{n}"
            began = time.time()
            _git(home, "clone", "-q", url, str(target))
            clones.append(time.time() - began)
            began = time.time()
            _git(home, "-C", str(target), "fetch", "-q", "origin")
            fetches.append(time.time() - began)
            shutil.rmtree(target)
    return clones, fetches


class _Forward(socketserver.BaseRequestHandler):
    """One connection from the container's relay, piped to the model stand-in's TCP port."""

    def handle(self) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.server.port))
        pipes = [
            threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True),
            threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True),
        ]
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.join()
        upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class _Relay(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, port: int) -> None:
        self.port = port
        super().__init__(str(path), _Forward)


@contextlib.contextmanager
def _gateway_socket(control: Path, port: int) -> Iterator[None]:
    path = control / "gateway.sock"
    server = _Relay(path, port)
    path.chmod(0o666)  # the sandbox user connects to it, as to the gateway's
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _idle_container(run: FloorRun, control: Path) -> Iterator[docker.models.containers.Container]:
    uid, gid = sandbox_user().split(":")
    owned = f"uid={uid},gid={gid}"
    container = docker.from_env().containers.run(
        run.image,
        ["sleep", "infinity"],
        name=f"bench-session-idle-{os.getpid()}",
        labels={BENCH_LABEL: "idle"},
        detach=True,
        user=f"{uid}:{gid}",
        runtime=run.runtime,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        tmpfs={
            "/tmp": f"rw,exec,nosuid,nodev,size=256m,{owned},mode=1777",
            "/home/node/.claude": f"rw,nosuid,nodev,size=64m,{owned},mode=0700",
            "/workspace": f"rw,nosuid,nodev,size=64m,{owned},mode=0755",
        },
        volumes={str(control): {"bind": "/run/claudecluster", "mode": "ro"}},
        init=True,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def cli_start_floor(run: FloorRun) -> list[float]:
    client = docker.APIClient()
    times = []
    with (
        AnthropicStandIn() as model,
        tempfile.TemporaryDirectory(prefix="bench-session-control-") as tmp,
    ):
        control = Path(tmp)
        control.chmod(0o755)
        (control / "prompt.md").write_text("Say done.\n")
        (control / "prompt.md").chmod(0o644)
        with _gateway_socket(control, model.port), _idle_container(run, control) as container:
            for n in range(run.rounds):
                model.reset()
                model.script([Text("done")])
                # Each round its own relay port: the entrypoint starts a relay per run.
                env = {"CLAUDECLUSTER_RELAY_PORT": str(8800 + n), "ANTHROPIC_API_KEY": "floor"}
                command = ["/usr/local/bin/claudecluster-sandbox", *CLI]
                exec_id = client.exec_create(container.id, command, environment=env)["Id"]
                began = time.time()
                client.exec_start(exec_id, detach=True)
                first = wait_for(model.main_requests, 120, 0.01, "the CLI's first request")
                times.append(first[0].received_at - began)
                wait_for(
                    lambda eid=exec_id: not client.exec_inspect(eid)["Running"],
                    120,
                    what="the CLI to exit",
                )
    return times


def measure(run: FloorRun) -> dict[str, float]:
    """Medians, in seconds, of each floor."""
    clones, fetches = git_floors(run)
    return {
        "docker run true": statistics.median(container_floor(run)),
        "git clone": statistics.median(clones),
        "git fetch": statistics.median(fetches),
        "CLI start": statistics.median(cli_start_floor(run)),
    }
