"""`claudecluster sessions` against a real Redis, with sessions queued as the front door queues
them (app.enqueue through tests.support.enqueue). A running session stopped from the command is
in tests/e2e/test_cli_sessions.py.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from redis import Redis

from jobs.common.queue import session_id_for, stop_requests_key
from jobs.common.request import Mode, SessionRequest
from tests.cli_support import cli_env, run_cli
from tests.support import enqueue, free_port


def sessions(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cli_env(tmp_path, REDIS_URL=redis_url), "sessions", *args, timeout=60)


def request(delivery: str, number: int, **values) -> SessionRequest:
    return SessionRequest(
        delivery_id=delivery,
        installation_id=42,
        repo="octo-org/hello-world",
        number=number,
        requester="octocat",
        requester_id=583231,
        instruction="add a CONTRIBUTING.md",
        comment_id=1000 + number,
        **values,
    )


def test_ls_and_show_list_queued_sessions_with_their_request(tmp_path, redis_url):
    redis = Redis.from_url(redis_url)
    first = enqueue(redis, request("d-1111", 12)).session_id
    second = enqueue(redis, request("d-2222", 34, pull=True, mode=Mode.REVIEW)).session_id

    listed = sessions(tmp_path, redis_url, "ls")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "session-" in line}
    assert set(rows) == {first, second}
    assert all(word in rows[first] for word in ("queued", "octo-org/hello-world", "issue #12"))
    assert "octocat" in rows[first] and "implement" in rows[first]
    assert "PR #34" in rows[second] and "review" in rows[second]
    # Newest first.
    assert listed.stdout.index(second) < listed.stdout.index(first)

    shown = sessions(tmp_path, redis_url, "show", first)
    assert shown.returncode == 0, shown.stderr
    for field in ("Repository", "octo-org/hello-world", "issue #12", "add a CONTRIBUTING.md"):
        assert field in shown.stdout
    assert "queued" in shown.stdout and "d-1111" in shown.stdout
    # By the delivery id it came from, too.
    by_delivery = sessions(tmp_path, redis_url, "show", "d-2222")
    assert by_delivery.returncode == 0
    assert ["Session", second] in [line.split() for line in by_delivery.stdout.splitlines()]


def test_show_and_stop_say_when_a_session_is_unknown_or_not_running(tmp_path, redis_url):
    redis = Redis.from_url(redis_url)
    queued = enqueue(redis, request("d-3333", 56)).session_id

    unknown = sessions(tmp_path, redis_url, "show", "session-nope")
    assert unknown.returncode == 1 and "unknown session session-nope" in unknown.stderr
    stop_unknown = sessions(tmp_path, redis_url, "stop", session_id_for("d-nope"))
    assert stop_unknown.returncode == 1 and "nothing to stop" in stop_unknown.stderr

    not_running = sessions(tmp_path, redis_url, "stop", queued)
    assert not_running.returncode == 1
    assert f"Session {queued} is not running (queued): nothing to stop." in not_running.stdout
    assert not redis.exists(stop_requests_key(queued))


def test_a_dead_redis_is_one_line_naming_redis_url_without_its_password(tmp_path):
    password = secrets.token_hex(12)
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    for args in (("ls",), ("show", "session-x"), ("stop", "session-x")):
        done = sessions(tmp_path, url, *args)
        assert done.returncode == 3, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Redis is not reachable at REDIS_URL=redis://:***@" in lines[0]
        assert password not in done.stdout + done.stderr


def test_stop_refuses_a_login_that_github_could_not_have(tmp_path, redis_url):
    done = sessions(tmp_path, redis_url, "stop", "session-x", "--as", "no such; login")
    assert done.returncode == 2
    assert "Invalid value for '--as': 'no such; login' is not a GitHub login" in done.stderr
