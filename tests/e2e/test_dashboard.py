"""The dashboard during real sessions, in a real browser (headless Chromium): the whole service
from the Procfile, Docker and the real CLI; GitHub's OAuth and API are the stand-in's.

A person signs in on the stand-in's authorize page, watches a running session's events arrive
before the session ends, and stops it from the page; nothing is pushed. Someone without access
to the repository sees none of it. With SCREENSHOT_DIR set (e.g. `SCREENSHOT_DIR=docs`), the
list and the session page are saved there as dashboard-sessions.png and dashboard-session.png.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.browser import chromium
from tests.e2e.conftest import FINAL, REPO, run_service
from tests.standins.anthropic import Text, ToolUse
from tests.support import wait_for

NOTES = "# Notes\n\nWatched live on the dashboard.\n"


@pytest.fixture(scope="module")
def dash(stand_ins, tmp_path_factory):
    github = stand_ins.github
    with run_service(
        "dashboard",
        5,
        stand_ins,
        tmp_path_factory,
        GITHUB_CLIENT_ID=github.app_client_id,
        GITHUB_CLIENT_SECRET=github.app_client_secret,
        GITHUB_URL=github.url,
    ) as svc:
        github.app_callback_urls = [f"{svc.url}/login/callback"]
        github.add_user("mallory")  # collaborator nowhere
        yield svc


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def signed_in(browser, svc, login: str):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{svc.url}/sessions")
    page.wait_for_selector("#authorize", timeout=30_000)
    page.fill("#login", login)
    page.click("#authorize")
    page.wait_for_selector("#login", timeout=30_000)
    assert page.text_content("#login") == login
    return page


def shoot(page, tmp_path: Path, name: str) -> None:
    target = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path) / name
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_session_is_listed_with_its_outcome(dash, browser):
    number = dash.new_issue("Say hello in the README")
    dash.anthropic.script(
        [
            ToolUse("Write", {"file_path": "/workspace/HELLO.md", "content": "Hello!\n"}),
            Text("Added HELLO.md with a greeting."),
        ]
    )
    answer = dash.comment(number, "/claude add a HELLO.md")
    assert answer.status_code == 202, answer.text
    session_id = answer.json()["session"]
    dash.wait_final(number)
    page = signed_in(browser, dash, "octocat")
    page.goto(f"{dash.url}/sessions/{session_id}")
    page.wait_for_selector("#stream-status:has-text('ended')", timeout=30_000)
    assert page.text_content("#state") == "done"
    pull = dash.pulls_for(number)[0]
    link = page.get_attribute("#links a:has-text('pull request')", "href")
    assert link and link.endswith(f"/pull/{pull.number}")
    assert page.query_selector("#events li.kind-edit:has-text('HELLO.md')") is not None
    assert "Hello!" in page.text_content("#events li.kind-edit")


def test_watch_a_running_session_then_stop_it_from_the_page(dash, browser, tmp_path):
    gh, api = dash.github, dash.anthropic
    number = dash.new_issue("Keep notes while you work")
    release = threading.Event()
    api.script(
        [
            [
                Text("I'll look around first."),
                ToolUse("Bash", {"command": "echo dashboard-was-here && ls"}),
            ],
            [
                Text("Writing the notes."),
                ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": NOTES}),
            ],
            ToolUse("Bash", {"command": "cat NOTES.md"}, hold=release),
            Text("Wrote NOTES.md."),
        ]
    )
    branches_before = gh.branches(REPO)
    answer = dash.comment(number, "/claude keep notes in NOTES.md")
    assert answer.status_code == 202, answer.text
    session_id = answer.json()["session"]
    try:
        page = signed_in(browser, dash, "octocat")

        def listed():
            page.goto(f"{dash.url}/sessions")
            return page.query_selector(f"tr.session[data-id='{session_id}']")

        wait_for(listed, 120, interval=1, what="the session in the list")
        page.goto(f"{dash.url}/sessions/{session_id}")
        # Claude's events arrive while the session runs: its answer is still held.
        page.wait_for_selector(
            "#events li.kind-output:has-text('dashboard-was-here')", timeout=180_000
        )
        page.wait_for_selector("#events li.kind-edit:has-text('NOTES.md')", timeout=120_000)
        assert "+Watched live on the dashboard." in page.text_content("#events li.kind-edit")
        assert page.text_content("#events li.kind-message pre") == "I'll look around first."
        assert page.text_content("#state") == "running"
        assert not [c for c in dash.tracking_comments(number) if FINAL.search(c.body)]
        shoot(page, tmp_path, "dashboard-session.png")
        page.goto(f"{dash.url}/sessions")
        shoot(page, tmp_path, "dashboard-sessions.png")

        # Someone who cannot write to the repository sees nothing of it.
        outsider = signed_in(browser, dash, "mallory")
        assert outsider.query_selector("#empty") is not None
        assert session_id not in outsider.content()
        assert outsider.goto(f"{dash.url}/sessions/{session_id}").status == 404
        assert outsider.request.get(f"{dash.url}/sessions/{session_id}/events").status == 404

        # The Stop form without its CSRF token is refused; the button stops the session.
        page.goto(f"{dash.url}/sessions/{session_id}")
        forged = page.request.post(f"{dash.url}/sessions/{session_id}/stop", form={})
        assert forged.status == 403
        page.click("#stop")
        page.wait_for_selector("#stop-asked", timeout=30_000)
        page.wait_for_selector("#state:has-text('stopped')", timeout=120_000)
        final = dash.wait_final(number, timeout=120)
    finally:
        release.set()
    assert "Stopped by @octocat" in final.body and "Nothing was pushed" in final.body
    assert not dash.pulls_for(number)
    assert gh.branches(REPO) == branches_before, "nothing was pushed"
    assert page.query_selector("#stop") is None
