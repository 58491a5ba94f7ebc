"""Real services for the tests: a redis-server of our own, started once per test run, and the
agent image, which must be built (`bash scripts/build-images.sh`): missing, the tests fail."""

from __future__ import annotations

import os

import docker
import pytest
from docker.errors import DockerException, ImageNotFound
from redis import Redis

from tests.support import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """Database 0, emptied for each test; the e2e service keeps database 1 to itself."""
    Redis.from_url(redis_server).flushdb()
    return redis_server


@pytest.fixture(scope="session")
def agent_image() -> str:
    image = os.environ.get("AGENT_IMAGE", "claudecluster/agent:latest")
    try:
        docker.from_env().images.get(image)
    except ImageNotFound:
        pytest.fail(f"agent image {image} is missing: run `bash scripts/build-images.sh`")
    except DockerException as exc:
        pytest.fail(f"the Docker engine is not reachable: {exc}")
    return image
