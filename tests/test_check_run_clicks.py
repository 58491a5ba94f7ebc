"""Stop and Re-run on a session's check run, at the front door against a real Redis.

A click comes as GitHub's `check_run` webhook (its own examples, tests/support.py) naming the
session in `external_id`; the web finds what that session was asked in its queued job and
either asks it to stop, as `/claude stop` does, or queues the same request again. Sessions and
their thread marks are made by the real front door and `jobs.session.thread.active`.
"""

from __future__ import annotations

import json
import zlib

import pytest
from redis import Redis

from jobs.common.queue import active_key, stop_requests_key
from jobs.session.thread import active
from tests.support import free_port, pointed_at, webhook_example
from tests.test_webhooks import REPO, job_kwargs, make_client, post, queued, trigger

INSTALLATION = 42


@pytest.fixture
def client(redis_url):
    client = make_client(redis_url)
    yield client
    client.close()


def clicked(
    action: str,
    session_id: str,
    login: str = "hubot",
    user_id: int = 7001,
    identifier: str = "stop",
    conclusion: str | None = "failure",
    check_run_id: int = 5_100_000_001,
) -> dict:
    payload = pointed_at(webhook_example("check_run", action), REPO, INSTALLATION, login, user_id)
    payload["check_run"].update(id=check_run_id, external_id=session_id, conclusion=conclusion)
    if action == "requested_action":
        payload["requested_action"] = {"identifier": identifier}
    return payload


def start_session(client, delivery: str = "d-original") -> str:
    body = "/claude add a CONTRIBUTING.md\nwith tests"
    resp = post(client, "issue_comment", trigger(body), delivery)
    assert resp.status_code == 202
    return resp.json["session"]


def test_stop_on_a_running_sessions_check_run_asks_it_to_stop_once(client, redis_url):
    session_id = start_session(client)
    redis = Redis.from_url(redis_url)
    thread = f"{REPO}#7"
    with active(redis, thread, session_id, 600, on_wait=lambda: None):
        first = post(client, "check_run", clicked("requested_action", session_id), "click-1")
        assert (first.status_code, first.json["status"]) == (202, "stopping")
        # GitHub redelivers the same click, and a captured one comes under a fresh id.
        again = post(client, "check_run", clicked("requested_action", session_id), "click-1")
        replayed = post(client, "check_run", clicked("requested_action", session_id), "click-2")
        assert [again.json["status"], replayed.json["status"]] == ["duplicate", "duplicate"]
        assert redis.lrange(stop_requests_key(session_id), 0, -1) == [b"hubot"]
        # Someone else's click is theirs to make (the session checks their access).
        other = clicked("requested_action", session_id, login="mallory", user_id=6666)
        assert post(client, "check_run", other, "click-3").status_code == 202
        assert redis.lrange(stop_requests_key(session_id), 0, -1) == [b"hubot", b"mallory"]
    assert not redis.exists(active_key(thread))
    assert queued(redis_url) == [session_id]  # a stop queues no session


def test_stop_on_a_session_that_is_not_running_asks_nothing(client, redis_url):
    session_id = start_session(client)
    redis = Redis.from_url(redis_url)
    resp = post(client, "check_run", clicked("requested_action", session_id), "click-1")
    assert (resp.status_code, resp.json["status"]) == (200, "not running")
    with active(redis, f"{REPO}#7", "session-another", 600, on_wait=lambda: None):
        # The thread runs another session now: this run's Stop must not stop that one.
        resp = post(client, "check_run", clicked("requested_action", session_id), "click-2")
        assert resp.json["status"] == "not running"
        assert not redis.exists(stop_requests_key("session-another"))
    assert not redis.exists(stop_requests_key(session_id))


def test_rerun_after_a_failure_queues_the_same_request_by_the_clicker_once(client, redis_url):
    session_id = start_session(client)
    original = job_kwargs(redis_url, session_id)
    first = post(client, "check_run", clicked("rerequested", session_id), "rerun-1")
    assert first.status_code == 202
    rerun_id = first.json["session"]
    assert rerun_id == "session-rerun-1"
    values = job_kwargs(redis_url, rerun_id)
    same = ("repo", "number", "pull", "mode", "instruction", "trigger", "comment_id", "phrase")
    assert {k: values[k] for k in same} == {k: original[k] for k in same}
    assert values["instruction"] == "add a CONTRIBUTING.md\nwith tests"
    assert (values["requester"], values["requester_id"]) == ("hubot", 7001)
    assert values["delivery_id"] == "rerun-1"
    # Redelivered, or replayed under a fresh id: still one second run.
    again = post(client, "check_run", clicked("rerequested", session_id), "rerun-1")
    replayed = post(client, "check_run", clicked("rerequested", session_id), "rerun-2")
    assert [again.json["status"], replayed.json["status"]] == ["duplicate", "duplicate"]
    assert queued(redis_url) == [session_id, rerun_id]
    # The second run has a check run of its own, and a Re-run of it works the same way.
    third = post(client, "check_run", clicked("rerequested", rerun_id, check_run_id=9), "rerun-3")
    assert third.status_code == 202
    assert job_kwargs(redis_url, third.json["session"])["instruction"] == original["instruction"]


def test_clicks_that_are_not_a_stop_or_rerun_of_a_known_session_start_nothing(client, redis_url):
    session_id = start_session(client)
    cases = {
        "ignored-1": clicked("requested_action", session_id, identifier="deploy"),
        "ignored-2": clicked("rerequested", session_id, conclusion="success"),
        "ignored-3": clicked("rerequested", "", conclusion="failure"),
        "ignored-4": clicked("rerequested", "rq:job:session-x; DROP", conclusion="failure"),
        "ignored-5": clicked("rerequested", "session-nobody-knows", conclusion="failure"),
    }
    bot = clicked("rerequested", session_id)
    bot["sender"].update(login="dependabot[bot]", type="Bot")
    cases["ignored-6"] = bot
    elsewhere = clicked("rerequested", session_id)
    elsewhere["repository"]["full_name"] = "octo-org/elsewhere"
    cases["ignored-7"] = elsewhere
    for delivery, payload in cases.items():
        resp = post(client, "check_run", payload, delivery)
        assert (resp.status_code, resp.json["status"]) == (200, "ignored"), delivery
    # GitHub's created and completed events of our own runs are not clicks.
    created = pointed_at(webhook_example("check_run", "created"), REPO, INSTALLATION)
    assert post(client, "check_run", created, "created-1").json["status"] == "ignored"
    assert queued(redis_url) == [session_id]


def test_a_click_without_the_fields_it_needs_is_a_400(client, redis_url):
    session_id = start_session(client)
    payload = clicked("rerequested", session_id)
    del payload["check_run"]["id"]
    resp = post(client, "check_run", payload, "broken-1")
    assert resp.status_code == 400 and "check_run.id" in resp.json["error"]
    assert queued(redis_url) == [session_id]


def test_a_click_while_redis_is_down_gets_a_503_for_github_to_redeliver():
    down = make_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        resp = post(down, "check_run", clicked("rerequested", "session-x"), "down-1")
        assert resp.status_code == 503
    finally:
        down.close()


def test_a_job_hash_that_is_not_a_sessions_request_is_not_re_run(client, redis_url):
    redis = Redis.from_url(redis_url)
    redis.hset("rq:job:session-garbled", "data", b"not zlib at all")
    other = zlib.compress(json.dumps(["os.system", None, [], {"command": "x"}]).encode())
    redis.hset("rq:job:session-other", "data", other)
    for session_id in ("session-garbled", "session-other"):
        resp = post(client, "check_run", clicked("rerequested", session_id), f"d-{session_id}")
        assert (resp.status_code, resp.json["status"]) == (200, "ignored")
    assert queued(redis_url) == []
