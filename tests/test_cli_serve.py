"""`claudecluster serve` as an operator starts it: the real console script, the Procfile's real
processes, dockerd and an embedded redis-server; SIGTERM must leave none of them behind."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import docker
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cli_support import CLI, cli_env, write_env_files
from tests.support import ROOT, RedisServer, free_port, wait_for

SETUP_LINK = re.compile(r"setup: +(http://\S+/setup\?token=\S+)")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children in sessions of their own included)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, pending = set(), [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def healthz(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def configure_every_role(tmp_path: Path) -> None:
    """Each role's file with its credential, so that every process stays up."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "app.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    write_env_files(
        tmp_path / "env",
        web={"GITHUB_WEBHOOK_SECRET": secrets.token_hex(24)},
        worker={"GITHUB_APP_ID": "1", "GITHUB_PRIVATE_KEY_PATH": str(tmp_path / "app.pem")},
        gateway={"ANTHROPIC_API_KEY": "test-model-key-" + secrets.token_hex(16)},
    )


def procfile_up(serve: subprocess.Popen, port: int) -> set[int]:
    """Once GET /healthz answers through serve and every Procfile process runs: its processes."""
    wait_for(lambda: healthz(port), 180, 0.5, "GET /healthz through serve")
    wanted = ("gunicorn", "jobs.worker", "jobs.gateway.service", "jobs.egress.service")

    def all_up() -> set[int]:
        below = descendants(serve.pid)
        commands = " ".join(command_of(pid) for pid in below)
        return below if all(name in commands for name in wanted) else set()

    return wait_for(all_up, 180, 0.5, "every Procfile process")


def ended(serve: subprocess.Popen) -> None:
    """After a failed test too: SIGTERM, so that serve stops its children (a SIGKILL would
    leave them running), and SIGKILL only when it does not end."""
    if serve.poll() is None:
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)


def worker_env(children: set[int]) -> dict[str, str]:
    worker = next(pid for pid in children if command_of(pid).startswith("python -m jobs.worker"))
    return environ_of(worker)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_runs_every_process_and_a_stop_signal_ends_them_all(tmp_path, stop):
    configure_every_role(tmp_path)
    port, redis_port = free_port(), free_port()
    # A tag of the tests' own, missing: serve builds it (from the build cache the agent image
    # left, so in seconds) before it starts anything.
    image = f"claudecluster/agent:serve-test-{secrets.token_hex(4)}"
    env = cli_env(tmp_path, HOST="127.0.0.1", AGENT_IMAGE=image)
    args = ["serve", "--port", str(port), "--redis-port", str(redis_port)]
    args += ["--redis-dir", str(tmp_path / "redis")]
    with (tmp_path / "serve.log").open("w") as log:
        serve = subprocess.Popen([str(CLI), *args], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        children = procfile_up(serve, port)
        redis_pid = next(pid for pid in children if "redis-server" in command_of(pid))
        assert listening(redis_port)
        seen = worker_env(children)
        assert seen["CLAUDECLUSTER_WAIT_FOR_CONFIG"] == "1"
        assert seen["REDIS_URL"] == f"redis://localhost:{redis_port}/0"
        assert "ANTHROPIC_API_KEY" not in seen and "GITHUB_WEBHOOK_SECRET" not in seen
        # Each process its own metrics folder; the web's /metrics sums its workers' files.
        web = environ_of(next(pid for pid in children if "gunicorn" in command_of(pid)))
        metrics = Path(seen["PROMETHEUS_MULTIPROC_DIR"]).parent
        assert seen["PROMETHEUS_MULTIPROC_DIR"] == str(metrics / "worker.1")
        assert web["PROMETHEUS_MULTIPROC_DIR"] == str(metrics / "web.1")
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200

        serve.send_signal(stop)
        assert serve.wait(60) == 128 + stop  # as honcho reports a stop by signal
    finally:
        ended(serve)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker.from_env().images.remove(image)  # the tag only: the image is the agent's
    output = (tmp_path / "serve.log").read_text()

    def left() -> list[tuple[int, str]]:
        return [(pid, command_of(pid)) for pid in children | {redis_pid} if alive(pid)]

    # A moment for the last exits to be reaped; a process still there after it was left behind.
    try:
        wait_for(lambda: not left(), 60, 0.2, "every child of serve to exit")
    except AssertionError:
        raise AssertionError(f"left running: {left()}\n{output[-3000:]}") from None
    assert not listening(redis_port) and not listening(port)
    assert f"build-images: agent: built {image}" in output
    assert f"embedded Redis on redis://localhost:{redis_port}/0" in output
    assert "embedded Redis stopped" in output
    assert "setup mode" not in output  # everything was configured
    assert not metrics.exists()  # the run's metrics files went with it


def test_with_no_credentials_serve_starts_in_setup_mode(tmp_path):
    """Fresh env files, nothing in them: every process still comes up, the web with /setup."""
    port = free_port()
    args = ["serve", "--port", str(port), "--redis-port", str(free_port())]
    args += ["--redis-dir", str(tmp_path / "redis")]
    env = cli_env(tmp_path, HOST="127.0.0.1")
    with (tmp_path / "serve.log").open("w") as log:
        serve = subprocess.Popen([str(CLI), *args], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        children = procfile_up(serve, port)
        # The link with the setup token opens setup; without the token it stays shut.
        link = wait_for(lambda: SETUP_LINK.search((tmp_path / "serve.log").read_text()), 120)
        assert link[1].startswith(f"http://localhost:{port}/setup?token=")
        with httpx.Client(follow_redirects=True, timeout=10) as browser:  # keeps the cookie
            assert browser.get(link[1]).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/setup", timeout=10).status_code == 403
        for role in ("web", "worker", "gateway"):
            assert (tmp_path / "env" / f"{role}.env").stat().st_mode & 0o777 == 0o600
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    finally:
        ended(serve)
    output = (tmp_path / "serve.log").read_text()
    assert f"(http://localhost:{port}/setup?token=...), or run `claudecluster setup`" in output
    wait_for(lambda: not any(alive(pid) for pid in children), 60, 0.2, "serve's children to exit")


def test_a_redis_already_listening_is_used_and_left_running(tmp_path):
    configure_every_role(tmp_path)
    (tmp_path / "theirs").mkdir()
    theirs = RedisServer(tmp_path / "theirs")
    theirs.start()
    port = free_port()
    args = ["serve", "--port", str(port), "--redis-port", str(theirs.port)]
    env = cli_env(tmp_path, HOST="127.0.0.1")
    try:
        with (tmp_path / "serve.log").open("w") as log:
            serve = subprocess.Popen([str(CLI), *args], env=env, cwd=ROOT, stdout=log, stderr=log)
        try:
            children = procfile_up(serve, port)
            assert not any("redis-server" in command_of(pid) for pid in children)
            assert worker_env(children)["REDIS_URL"] == f"redis://localhost:{theirs.port}/0"
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)
        finally:
            ended(serve)
        assert theirs.proc.poll() is None and listening(theirs.port)  # not serve's to stop
        output = (tmp_path / "serve.log").read_text()
        assert f"using the Redis already on redis://localhost:{theirs.port}/0" in output
    finally:
        theirs.stop()


def test_without_docker_serve_creates_the_env_files_then_names_the_fix(tmp_path):
    env = cli_env(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/dead.sock")
    port = free_port()
    done = subprocess.run(
        [str(CLI), "serve", "--port", str(port), "--redis-port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Docker engine is not reachable at unix://{tmp_path}/dead.sock" in output
    assert "dockerd" in output
    for role in ("web", "worker", "gateway"):
        path = tmp_path / "env" / f"{role}.env"
        assert path.stat().st_mode & 0o777 == 0o600
        example = ROOT / "deploy" / "env" / f"{role}.env.example"
        assert path.read_text() == example.read_text()
        assert f"created {path} (mode 0600)" in output
    # Missing credentials do not stop it: setup mode will ask for them.
    assert "not configured yet, the worker: GITHUB_APP_ID is not set" in output
    assert "not configured yet, the gateway:" in output and "ANTHROPIC_API_KEY" in output
    assert f"open the link the web prints (http://localhost:{port}/setup?token=...)" in output
    assert not (tmp_path / "redis").exists()  # nothing was started


def test_a_secret_in_the_wrong_roles_file_stops_serve(tmp_path):
    secret = secrets.token_hex(24)
    write_env_files(tmp_path / "env", worker={"GITHUB_WEBHOOK_SECRET": secret})
    done = subprocess.run(
        [str(CLI), "serve", "--port", str(free_port()), "--redis-port", str(free_port())],
        env=cli_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "GITHUB_WEBHOOK_SECRET is set in" in output and "only the web may hold it" in output
    assert secret not in output
