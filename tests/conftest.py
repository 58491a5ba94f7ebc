"""Real services for the tests: a redis-server of our own, started once per test run."""

from __future__ import annotations

import pytest
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
