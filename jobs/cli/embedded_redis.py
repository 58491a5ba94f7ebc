"""The Redis `serve` starts when none is configured: a redis-server child, stopped with it.

Its own session (process group), so that Ctrl-C in the terminal reaches `serve` alone: the
service's processes are stopped first, while the queue they drain into is still there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from dotenv import dotenv_values
from redis import Redis
from redis.exceptions import RedisError

from jobs.common.settings import ENV_DIR


class RedisUnavailable(Exception):
    """The embedded Redis cannot be started; the message says what to do."""


def configured(environ: dict[str, str]) -> bool:
    """Whether the operator chose a Redis: REDIS_URL in the environment, .env or an env file."""
    if environ.get("REDIS_URL"):
        return True
    files = [Path(".env"), *sorted(ENV_DIR.glob("*.env"))]
    return any(path.is_file() and dotenv_values(path).get("REDIS_URL") for path in files)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


class EmbeddedRedis:
    def __init__(self, port: int, data: Path) -> None:
        self.port, self.data = port, data
        self.url = f"redis://localhost:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "REDIS_URL is not set and redis-server is not installed: install it "
                "(apt-get install redis-server) or set REDIS_URL"
            )
        self.data.mkdir(parents=True, exist_ok=True)
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--dir", str(self.data.resolve()), "--appendonly", "yes", "--daemonize", "no"]
        with (self.data / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self, timeout: float = 30) -> None:
        """Until it answers PING; a slow disk replaying its append-only file may take a while."""
        client = Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RedisUnavailable(
                    f"the embedded redis-server exited ({self.proc.returncode}): "
                    f"see {self.data / 'redis.log'}"
                )
            try:
                if client.ping():
                    return
            except RedisError:
                time.sleep(0.1)
        raise RedisUnavailable(
            f"the embedded redis-server did not answer within {timeout:g}s: "
            f"see {self.data / 'redis.log'}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # redis-server flushes its append-only file on SIGTERM
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
