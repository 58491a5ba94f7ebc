"""The session's record and event stream in a real Redis, as the worker writes them.

The CLI's output goes through the real `Transcript`; the tracking comment talks to the GitHub
stand-in with a real installation token.
"""

from __future__ import annotations

import json
import secrets

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis import Redis

from jobs.common.history import (
    INDEX,
    MAX_EVENTS,
    TEXT_LIMIT,
    SessionHistory,
    events_key,
    load_record,
    mark_interrupted,
    parse_entry,
    recent_records,
    record_key,
)
from jobs.common.redact import REDACTED
from jobs.common.request import SessionRequest
from jobs.common.settings import ConfigError, WorkerSettings
from jobs.github.checks import CheckRun
from jobs.github.client import ISSUE_SESSION_PERMISSIONS, RepoSession
from jobs.github.tracking import RUNNING, TrackingComment
from jobs.sandbox.transcript import Outcome, Transcript
from jobs.session.commits import pull_body
from jobs.session.state import Session
from tests.standins.github import GitHubStandIn

REPO = "octo-org/history"


def request(number: int = 7) -> SessionRequest:
    return SessionRequest(
        delivery_id=f"d-{secrets.token_hex(4)}",
        installation_id=77,
        repo=REPO,
        number=number,
        requester="octocat",
        requester_id=1,
        instruction="fix the bug",
    )


def cli_lines(token: str) -> list[str]:
    """What the CLI prints for a turn with text, a Bash call, an Edit and their results."""
    turn = {"id": "msg_1", "role": "assistant"}
    return [
        json.dumps({"type": "system", "subtype": "init"}),
        json.dumps(
            {
                "type": "assistant",
                "message": {**turn, "content": [{"type": "text", "text": "Running tests."}]},
            }
        ),
        json.dumps(
            {
                "type": "assistant",
                "message": {
                    **turn,
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "Bash",
                            "input": {"command": "pytest -q"},
                        }
                    ],
                },
            }
        ),
        json.dumps(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": f"1 passed\nleaked {token}",
                            "is_error": False,
                        }
                    ],
                },
            }
        ),
        json.dumps(
            {
                "type": "assistant",
                "message": {
                    "id": "msg_2",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "Edit",
                            "input": {
                                "file_path": "/workspace/app.py",
                                "old_string": "x = 1\n",
                                "new_string": "x = 2\n",
                            },
                        }
                    ],
                },
            }
        ),
        # What a hostile sandbox may print: shown as nothing, and nothing breaks.
        json.dumps({"type": "assistant", "message": "not an object"}),
        json.dumps({"type": "user", "message": {"content": "plain"}}),
        json.dumps({"type": "assistant", "message": {"content": [{"type": "tool_use"}]}}),
        json.dumps({"type": "assistant", "message": {"content": [{"name": "MultiEdit"}]}}),
        '{"type": "result", "is_error": false, "result": "ok", "num_turns": 2}',
    ]


def events(redis: Redis, session_id: str) -> list[dict]:
    return [parse_entry(i, f)[1] for i, f in redis.xrange(events_key(session_id))]


def test_cli_events_become_bounded_redacted_dashboard_events(redis_url):
    redis = Redis.from_url(redis_url)
    settings = WorkerSettings.parse(SESSION_HISTORY_DAYS="2")
    token = "ghs_" + secrets.token_hex(18)
    history = SessionHistory(redis, "session-h1", settings)
    history.open(request(), "implement", "https://gh.test/octo-org/history/issues/7#issuecomment-1")
    transcript = Transcript(on_event=history.cli_event)
    for line in cli_lines(token):
        transcript.feed(line)
    long_text = {"type": "text", "text": "y" * (TEXT_LIMIT * 3)}
    transcript.feed(
        json.dumps({"type": "assistant", "message": {"id": "m3", "content": [long_text]}})
    )

    got = events(redis, "session-h1")
    kinds = [e["kind"] for e in got]
    assert kinds == ["message", "bash", "output", "edit", "tool", "message"]
    assert got[1]["command"] == "pytest -q"
    assert got[2]["tool"] == "Bash" and got[2]["text"].startswith("1 passed")
    assert token not in json.dumps(got) and REDACTED in got[2]["text"]
    assert got[3]["path"] == "app.py"  # as the repository names it
    assert "-x = 1" in got[3]["diff"] and "+x = 2" in got[3]["diff"]
    assert "+++ b/app.py" in got[3]["diff"]
    assert len(got[-1]["text"]) < TEXT_LIMIT + 100 and "characters cut" in got[-1]["text"]
    assert transcript.outcome.finished  # the verdict is still read as before

    record = load_record(redis, "session-h1")
    assert record is not None and record.turns == 3  # one per assistant message id
    assert record.thread_url == "https://gh.test/octo-org/history/issues/7"
    # Kept for SESSION_HISTORY_DAYS after the last write.
    for key in (record_key("session-h1"), events_key("session-h1")):
        assert 2 * 86_400 - 60 < redis.ttl(key) <= 2 * 86_400


def test_the_stream_is_capped_and_the_index_forgets_old_sessions(redis_url):
    redis = Redis.from_url(redis_url)
    settings = WorkerSettings.parse()
    history = SessionHistory(redis, "session-cap", settings)
    history.open(request(), "implement", "")
    for i in range(MAX_EVENTS + 500):
        history.event("message", text=str(i))
    # XADD's approximate MAXLEN trims whole nodes: never far past the cap, never under it.
    assert MAX_EVENTS <= redis.xlen(events_key("session-cap")) < MAX_EVENTS + 200

    redis.zadd(INDEX, {"session-ancient": 1_000})
    redis.hset(record_key("session-ancient"), mapping={"id": "session-ancient", "repo": REPO})
    assert [r.id for r in recent_records(redis, settings)] == ["session-cap"]
    assert redis.zscore(INDEX, "session-ancient") is None


def test_nothing_is_written_for_a_session_that_never_started(redis_url):
    redis = Redis.from_url(redis_url)
    history = SessionHistory(redis, "session-none", WorkerSettings.parse())
    history.cli_event(
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}]}}
    )
    history.finish("done", "answered", {})
    assert not redis.exists(record_key("session-none"), events_key("session-none"))


@pytest.fixture
def github():
    with GitHubStandIn() as standin:
        standin.add_installation(77, "octo-org")
        standin.add_repo(REPO, 77)
        standin.add_issue(REPO, 7, "A bug", "/claude fix the bug", "octocat", 1)
        yield standin


def test_tracking_comment_writes_record_steps_end_and_links_to_the_page(redis_url, github):
    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
        PUBLIC_URL="https://claude.example.test/",
    )
    redis = Redis.from_url(redis_url)
    asked = request()
    repo = RepoSession(settings, 77, REPO, ISSUE_SESSION_PERMISSIONS)
    history = SessionHistory(redis, "session-t1", settings)
    check = CheckRun(repo, asked, "session-t1", redis)
    tracking = TrackingComment(repo, asked, "session-t1", history=history, check=check)
    tracking.start()
    tracking.advance(RUNNING)
    body = github.comments[-1].body
    assert "[Session log](https://claude.example.test/sessions/session-t1)" in body

    outcome = Outcome(is_error=False, result="Fixed.", num_turns=4, cost_usd=0.25)
    pull = {"number": 8, "html_url": f"{github.url}/{REPO}/pull/8"}
    tracking.pull_request_opened(pull, outcome)

    record = load_record(redis, "session-t1")
    assert record is not None
    assert (record.state, record.repo, record.number, record.requester) == (
        "done",
        REPO,
        7,
        "octocat",
    )
    assert record.thread_url == f"{github.url}/{REPO}/issues/7"
    assert record.links == {"pull request": pull["html_url"]}
    assert (record.turns, record.cost_usd) == (4, 0.25)
    assert record.ended is not None and record.ended >= record.started
    steps = [(e["kind"], e.get("name") or e.get("state")) for e in events(redis, "session-t1")]
    assert steps == [
        ("step", "Preparing the workspace"),
        ("state", "running"),
        ("step", "Running Claude"),
        ("end", "done"),
    ]
    assert "claude.example.test/sessions/session-t1" in github.comments[-1].body
    # The pull request's body links to the page too.
    session = Session("session-t1", asked, settings, redis, repo, tracking, check)
    body = pull_body(session, "Fixed.", "Closes #7")
    assert "[Session log](https://claude.example.test/sessions/session-t1)" in body
    unlinked = Session(
        "session-t1",
        asked,
        settings.model_copy(update={"public_url": None}),
        redis,
        repo,
        tracking,
        check,
    )
    assert "Session log" not in pull_body(unlinked, "Fixed.", "Closes #7")
    repo.revoke()


def test_an_interrupted_session_ends_failed_and_a_finished_one_is_left_alone(redis_url):
    redis = Redis.from_url(redis_url)
    settings = WorkerSettings.parse()
    running = SessionHistory(redis, "session-cut", settings)
    running.open(request(), "implement", "")
    mark_interrupted(redis, "session-cut", "⚠️ **Interrupted** (the worker stopped)")
    record = load_record(redis, "session-cut")
    assert record is not None and record.state == "failed" and "Interrupted" in record.outcome
    assert events(redis, "session-cut")[-1]["kind"] == "end"
    assert redis.ttl(record_key("session-cut")) > 0  # still expires

    finished = SessionHistory(redis, "session-fine", settings)
    finished.open(request(), "implement", "")
    finished.finish("done", "✅ done", {})
    mark_interrupted(redis, "session-fine", "late")
    assert load_record(redis, "session-fine").state == "done"
    mark_interrupted(redis, "session-unknown", "no record")  # nothing to end: nothing written
    assert not redis.exists(record_key("session-unknown"))


def test_the_end_event_is_in_the_stream_before_the_state_says_ended(redis_url):
    # A live stream that finds nothing new and the state ended closes (app/live.py): were the
    # state written first, a reader between the two writes would close without the end event.
    redis = Redis.from_url(redis_url)
    settings = WorkerSettings.parse()
    for session_id in ["session-order-done", "session-order-cut"]:
        history = SessionHistory(redis, session_id, settings)
        history.open(request(), "implement", "")
        with redis.monitor() as monitor:
            if session_id.endswith("done"):
                history.finish("done", "✅ done", {})
            else:
                mark_interrupted(redis, session_id, "cut")
            redis.ping()  # the last command Redis sees from us, after both writes
            writes = []
            for seen in monitor.listen():
                command = seen["command"]
                if command.startswith("PING"):
                    break
                if command.startswith(("XADD", "HSET")):
                    writes.append(command.split()[0])
        assert writes == ["XADD", "HSET"], writes


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking"])},
    optional={
        "text": JSON,
        "name": st.sampled_from(["Bash", "Edit", "MultiEdit", "Write", "NotebookEdit", "Read"]),
        "input": JSON,
        "id": JSON,
        "tool_use_id": JSON,
        "content": JSON,
        "is_error": JSON,
    },
)
EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["assistant", "user", "system", "result"])},
    optional={
        "message": JSON
        | st.fixed_dictionaries(
            {}, optional={"id": JSON, "content": JSON | st.lists(BLOCK | JSON, max_size=4)}
        )
    },
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(EVENT)
def test_whatever_the_sandbox_prints_the_history_never_raises(redis_server, event):
    history = SessionHistory(Redis.from_url(redis_server), "session-fuzz", WorkerSettings.parse())
    history.opened = True
    history.cli_event(event)


@pytest.mark.parametrize("value", ["0", "-3", "two weeks"])
def test_a_bad_retention_stops_start_up_naming_the_variable(value):
    with pytest.raises(ConfigError, match="SESSION_HISTORY_DAYS"):
        WorkerSettings.parse(SESSION_HISTORY_DAYS=value)
