"""Real services for the tests: a redis-server of our own, started once per test run."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from redis import Redis

from tests.support import free_port, wait_for


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(url)

    def up():
        try:
            return client.ping()
        except Exception:
            return False

    wait_for(up, 10, what="redis-server")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server):
    """Database 0, emptied for each test; the e2e service keeps database 1 to itself."""
    Redis.from_url(redis_server).flushdb()
    return redis_server
