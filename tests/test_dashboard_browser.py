"""The dashboard in a real browser (headless Chromium): sign-in through the GitHub stand-in's
authorize page, events appearing while they are written, and the stream's reconnects.

The session's events come from the worker's history writer; the whole session, with Docker and
the real CLI, is tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import pytest

from jobs.common.history import events_key
from tests.browser import chromium
from tests.dashboard_support import MINE, THEIRS, Dashboard, dashboard
from tests.support import wait_for


@pytest.fixture
def board(redis_url):
    with dashboard(redis_url) as running:
        yield running


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


def turn(i: int) -> dict:
    """One assistant message of the CLI's stream-json: a text and a Bash call."""
    bash = {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": f"echo {i}"}}
    content = [{"type": "text", "text": f"thinking {i}"}, bash]
    return {"type": "assistant", "message": {"id": f"m{i}", "content": content}}


def signed_in_page(board: Dashboard, browser, login: str, path: str = "/sessions"):
    page = browser.new_context().new_page()
    page.goto(f"{board.url}{path}")
    # Not signed in: our /login, then GitHub's authorize page.
    page.wait_for_selector("#authorize", timeout=20_000)
    page.fill("#login", login)
    page.click("#authorize")
    page.wait_for_selector("#login", timeout=20_000)  # back on the dashboard, signed in
    assert page.text_content("#login") == login
    return page


def test_events_appear_live_and_reconnects_neither_lose_nor_repeat_any(board, browser):
    # Each response streams half a second, then the browser reconnects with Last-Event-ID.
    board.service.live.lifetime = 0.5
    record = board.session(MINE)
    page = signed_in_page(board, browser, "alice", f"/sessions/{record.session_id}")
    assert page.url.endswith(f"/sessions/{record.session_id}")
    streams = []
    page.on("request", lambda r: streams.append(r) if r.url.endswith("/events") else None)
    for i in range(12):
        record.cli_event(turn(i))
        page.wait_for_selector(f"#events li:has-text('echo {i}')", timeout=20_000)
        page.wait_for_timeout(150)  # let some of the writes fall between two responses
    record.finish("done", "**Claude opened #2**", {"pull request": "https://example.test/p/2"})
    page.wait_for_selector("#stream-status:has-text('ended')", timeout=20_000)

    stored = [i.decode() for i, _ in board.redis.xrange(events_key(record.session_id))]
    seen = page.evaluate("window.seenEventIds")
    assert seen == stored  # in order, none missing, none twice, across many reconnects
    assert page.text_content("#state") == "done"
    assert page.get_attribute("#links a:has-text('pull request')", "href").endswith("/p/2")
    assert len(streams) >= 3  # the browser did reconnect, with Last-Event-ID after the first
    assert all(r.all_headers().get("last-event-id") for r in streams[1:])
    assert page.query_selector("#stop") is None


def test_stop_without_the_csrf_token_is_refused_and_with_it_is_written(board, browser):
    record = board.session(MINE)
    page = signed_in_page(board, browser, "alice", f"/sessions/{record.session_id}")
    # The page's own cookie, no token: what another site's form would send.
    refused = page.request.post(f"{board.url}/sessions/{record.session_id}/stop", form={})
    assert refused.status == 403
    assert not board.redis.exists(f"claudecluster:stop-requests:{record.session_id}")
    page.click("#stop")
    page.wait_for_selector("#stop-asked", timeout=20_000)
    wait_for(
        lambda: (
            board.redis.lrange(f"claudecluster:stop-requests:{record.session_id}", 0, -1)
            == [b"alice"]
        ),
        20,
        what="the stop request",
    )


def test_a_person_without_access_sees_none_of_the_repositorys_sessions(board, browser):
    theirs = board.session(THEIRS)
    page = signed_in_page(board, browser, "mallory")
    assert page.query_selector("#empty") is not None
    assert theirs.session_id not in page.content()
    assert page.goto(f"{board.url}/sessions/{theirs.session_id}").status == 404
    events = page.request.get(f"{board.url}/sessions/{theirs.session_id}/events")
    assert events.status == 404
