"""`claudecluster serve`: the Procfile's processes, with what they need started first.

In order: each role's env file (from its example, mode 0600), the configuration (a missing
credential is reported and the processes start anyway, in setup mode: the web serves /setup,
the worker and gateway wait for their configuration), Docker (the one thing that stops it), the
agent image (built when missing), an embedded Redis when none is configured, then the Procfile.

The Procfile runs under honcho's Manager, in this process: each child in a session of its own,
SIGTERM to all of them when one stops or on Ctrl-C/SIGTERM, SIGKILL after 5 s. That is what
`honcho start` did, with its output, and without a second supervisor between the signal and the
children; the embedded Redis is stopped only after them, so they can finish their last writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TypeVar

import click
import docker
from docker.errors import DockerException, ImageNotFound
from honcho.environ import expand_processes, parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer
from rich.console import Console
from rich.markup import escape

from jobs.cli import project
from jobs.cli.checks import docker_problem
from jobs.cli.embedded_redis import EmbeddedRedis, RedisUnavailable, configured, listening
from jobs.common.metrics import MULTIPROC_DIR
from jobs.common.settings import (
    CONFIG_ERROR_EXIT,
    ROLES,
    SETTINGS,
    WAIT_FOR_CONFIG,
    ConfigError,
    WebSettings,
    WorkerSettings,
    env_file,
)

ROLE_FILES = ("web", "worker", "gateway")  # the egress holds nothing and has no file
console = Console(stderr=True, soft_wrap=True, highlight=False)
T = TypeVar("T")


class Stop(Exception):
    """`serve` cannot start the service; the message is the fix, `code` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    console.print(f"[bold]serve:[/bold] {escape(text)}")


def create_env_files(root: Path) -> None:
    for role in ROLE_FILES:
        path = env_file(role)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        example = (root / "deploy" / "env" / f"{role}.env.example").read_bytes()
        # Created 0600 from the start: the file is about to hold a secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(example)
        say(f"created {path} (mode 0600) from its example")


def check_configuration(port: int) -> None:
    """Say what is missing; only another role's secret in a role's files stops the start (that
    process would refuse it, in setup mode too)."""
    foreign = [line for role in ROLES for line in SETTINGS[role].foreign_secrets()]
    if foreign:
        raise Stop("; ".join(foreign), CONFIG_ERROR_EXIT)
    missing = []
    for role in ROLES:
        try:
            SETTINGS[role].load()
        except ConfigError as exc:
            missing.append(f"the {role}: {exc}")
    if missing:
        for line in missing:
            say(f"not configured yet, {line}")
        say(
            "starting in setup mode, which will guide you: open the link the web prints "
            f"(http://localhost:{port}/setup?token=...), or run `claudecluster setup`"
        )


def setting(read: Callable[[], T], fallback: T) -> T:
    try:
        return read()
    except ConfigError:
        return fallback  # malformed; check_configuration named it already


def ensure_image(root: Path, image: str) -> None:
    """Build the agent image when it is missing or its inputs changed (an upgrade): the script
    reuses an image whose inputs are unchanged in about a second, so this runs every start."""
    try:
        docker.from_env(timeout=15).images.get(image)
    except ImageNotFound:
        pass
    except DockerException as exc:
        raise Stop(f"could not look up the agent image {image}: {exc}") from None
    build_image(root, image)


def build_image(root: Path, image: str) -> None:
    command = ["bash", str(root / "scripts" / "build-images.sh")]
    env = {**os.environ, "AGENT_IMAGE": image}
    tail: deque[str] = deque(maxlen=20)
    with console.status(f"building the agent image {image} (first start: minutes)") as status:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for line in proc.stdout or ():
                line = line.rstrip()
                tail.append(line)
                if line.startswith("build-images:"):
                    console.print(escape(line))  # the script's own steps stay on screen
                elif line:
                    status.update(f"building the agent image {image}: {escape(line[:100])}")
            code = proc.wait()
        finally:
            if proc.poll() is None:  # serve was stopped mid-build: so is the build
                proc.terminate()
                proc.wait(30)
    if code != 0:
        console.print(escape("\n".join(tail)))
        raise Stop(f"building {image} failed (exit {code}): see above, then run again")


def local_redis(port: int, data: Path, stack: ExitStack) -> str | None:
    """The Redis on `port` when none is configured, started here when nothing listens there;
    `stack` stops it, however serve ends (even while it is still starting)."""
    if configured(dict(os.environ)):
        return None
    url = f"redis://localhost:{port}/0"
    if listening(port):
        say(f"REDIS_URL is not set: using the Redis already on {url}")
        return url
    redis = EmbeddedRedis(port, data)
    stack.callback(stop_redis, redis)
    try:
        redis.start()
        with console.status(f"waiting for the embedded Redis on port {port}"):
            redis.wait()
    except RedisUnavailable as exc:
        raise Stop(str(exc)) from None
    say(f"embedded Redis on {url} (data in {data})")
    return url


def stop_redis(redis: EmbeddedRedis) -> None:
    if redis.proc is not None:
        redis.stop()
        say("embedded Redis stopped")


def run_procfile(root: Path, port: int, extra: dict[str, str], metrics: Path) -> int:
    procfile = parse_procfile((root / "Procfile").read_text())
    base = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    manager = Manager(Printer(sys.stdout))
    # The app reads .env itself (one parser for quotes and escapes), so nothing is read here;
    # each process gets a PORT counted from the web's, and a metrics folder of its own under
    # `metrics` (jobs/common/metrics.py).
    for process in expand_processes(procfile.processes, env=extra, port=port):
        env = {**base, **process.env, MULTIPROC_DIR: str(metrics / process.name)}
        manager.add_process(process.name, process.cmd, env=env, cwd=root)
    manager.loop()
    return manager.returncode or 0


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@click.command()
@click.option("--port", type=int, help="The web's port (default: PORT from the web's settings).")
@click.option(
    "--redis-port", default=6379, show_default=True, help="Where the embedded Redis listens."
)
@click.option(
    "--redis-dir",
    type=click.Path(path_type=Path),
    default=Path(".cache/redis"),
    show_default=True,
    help="The embedded Redis's data, relative to the checkout.",
)
def serve(port: int | None, redis_port: int, redis_dir: Path) -> None:
    """Run the service: web, worker, gateway and egress, as in the Procfile."""
    root = project.enter()
    # Until honcho's Manager takes the signals over, SIGTERM unwinds like Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        with ExitStack() as stack:
            code = start(root, port, redis_port, redis_dir, stack)
    except Stop as exc:
        console.print(f"[bold red]serve:[/bold red] {escape(str(exc))}")
        code = exc.code
    sys.exit(code)


def start(root: Path, port: int | None, redis_port: int, redis_dir: Path, stack: ExitStack) -> int:
    create_env_files(root)
    port = port or setting(lambda: WebSettings.parse().port, 8000)
    check_configuration(port)
    problem = docker_problem()
    if problem:
        raise Stop(problem)
    image = setting(lambda: WorkerSettings.parse().agent_image, "claudecluster/agent:latest")
    ensure_image(root, image)
    redis_url = local_redis(redis_port, redis_dir, stack)
    extra = {WAIT_FOR_CONFIG: "1"}
    if redis_url is not None:
        extra["REDIS_URL"] = redis_url
    # The processes' metrics files last as long as this run: counts start at zero each start.
    metrics = Path(tempfile.mkdtemp(prefix="claudecluster-metrics-"))
    stack.callback(shutil.rmtree, metrics, ignore_errors=True)
    return run_procfile(root, port, extra, metrics)
