"""A session's check run, end to end on real parts: the states GitHub (the stand-in) sees, its
Stop button while Claude runs, Re-run after a failure, and a Checks API that is down.

The clicks are GitHub's own `check_run` webhooks (tests/support.py `check_run_payload`), sent
to the service's front door like every other delivery.
"""

from __future__ import annotations

import re
import threading

from tests.e2e.conftest import ANY_STATE, FINAL, REPO, leftover_containers
from tests.standins.anthropic import Fail, Text, ToolUse
from tests.standins.github_checks import CheckRunRecord
from tests.standins.github_pulls import NewPull
from tests.standins.openapi import validate_response
from tests.support import check_run_payload, wait_for

SUMMARY = "greet() now says hello."
HELLO = "def greet():\n    return 'hello'\n"


def open_pull(service, branch: str):
    return service.github.add_pull(
        REPO,
        NewPull(branch, title=f"Change {branch}", files={"greet.py": "def greet():\n    pass\n"}),
    )


def run_of(service, session_id: str) -> CheckRunRecord | None:
    runs = [r for r in service.github.check_runs_of(REPO) if r.external_id == session_id]
    return runs[-1] if runs else None


def statuses(run: CheckRunRecord) -> list[str]:
    """The statuses it went through, each once (a note while it runs repeats in_progress)."""
    seen: list[str] = []
    for state in run.history:
        if not seen or seen[-1] != state.status:
            seen.append(state.status)
    return seen


def final_of(service, number: int, session_id: str, timeout: float = 240):
    def final():
        for comment in service.tracking_comments(number):
            found = FINAL.search(comment.body)
            if found and found.group(1) == session_id:
                return comment
        return None

    try:
        return wait_for(final, timeout, what=f"{session_id}'s final comment")
    except AssertionError:
        raise AssertionError(f"no final comment:\n{service.tail('worker')}") from None


def completed(service, session_id: str) -> CheckRunRecord:
    return wait_for(
        lambda: (run := run_of(service, session_id)) and run.status == "completed" and run,
        60,
        what=f"{session_id}'s check run to complete",
    )


def click(service, run: CheckRunRecord, action: str, login: str, user_id: int, delivery=None):
    """`login` clicks Stop (`requested_action`) or Re-run (`rerequested`) on the run."""
    identifier = "stop" if action == "requested_action" else ""
    payload = check_run_payload(service.github, run.id, action, login, user_id, identifier)
    return service.deliver(payload, event="check_run", delivery=delivery)


def test_a_pull_request_session_is_queued_in_progress_then_success_with_its_summary(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "checks/success")
    head = pr.head_sha
    api.script(
        [ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}), Text(SUMMARY)]
    )
    answer = service.comment(pr.number, "/claude make greet say hello", pull=True)
    assert answer.status_code == 202
    session_id = answer.json()["session"]
    final_of(service, pr.number, session_id)

    run = completed(service, session_id)
    assert (run.name, run.head_sha) == ("Claude", head)
    assert statuses(run) == ["queued", "in_progress", "completed"]
    assert run.history[0].actions == () and run.history[1].actions == ("stop",)
    assert (run.conclusion, run.history[-1].actions) == ("success", ())
    assert run.output["title"] == "Claude pushed a commit to `checks/success`"
    summary = run.output["summary"] or ""
    commit = gh.branches(REPO)["checks/success"]
    assert SUMMARY in summary and f"/commit/{commit}" in summary
    assert re.search(r"⏱ \d+(m \d+)?s · 2 turns · \$0\.\d{4}", summary), summary
    assert run.started_at is not None and run.completed_at is not None


def test_an_issue_session_shows_its_run_on_the_pull_request_it_opens(service):
    api = service.anthropic
    number = service.new_issue("Add a NOTES.md")
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": "# Notes\n"}),
            Text("Added NOTES.md."),
        ]
    )
    answer = service.comment(number, "/claude add a NOTES.md")
    session_id = answer.json()["session"]
    final_of(service, number, session_id)
    [pull] = service.pulls_for(number)
    run = completed(service, session_id)
    assert (run.head_sha, run.conclusion) == (
        service.github.branches(REPO)[pull.head_ref],
        "success",
    )
    assert statuses(run) == ["completed"]  # an issue has no pull request until it opens one
    assert run.output["title"] == f"Claude opened #{pull.number}"
    assert "Added NOTES.md." in (run.output["summary"] or "")


def test_a_failed_session_says_why_and_re_run_runs_the_same_request_to_success(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "checks/rerun")
    api.script([Fail(401, "authentication_error", "invalid x-api-key")])
    instruction = "/claude make greet say hello"
    failed = service.comment(pr.number, instruction, pull=True).json()["session"]
    final_of(service, pr.number, failed)
    run = completed(service, failed)
    assert run.conclusion == "failure"
    assert run.output["title"] == "Claude could not finish this."
    assert "Reason:" in (run.output["summary"] or "")

    api.reset()
    api.script(
        [ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}), Text(SUMMARY)]
    )
    rerun = click(service, run, "rerequested", "octocat", 583231, f"rerun-{run.id}")
    assert rerun.status_code == 202, rerun.text
    second = rerun.json()["session"]
    assert second != failed
    # GitHub redelivering the click queues nothing more.
    again = click(service, run, "rerequested", "octocat", 583231, f"rerun-{run.id}")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    final = final_of(service, pr.number, second)
    assert "pushed a commit to `checks/rerun`" in final.body, final.body
    assert gh.read_file(REPO, "checks/rerun", "greet.py") == HELLO
    assert "make greet say hello" in api.main_requests()[0].user_text()
    new_run = completed(service, second)
    assert (new_run.conclusion, statuses(new_run)) == (
        "success",
        ["queued", "in_progress", "completed"],
    )
    assert run_of(service, failed).conclusion == "failure"  # the first run keeps its end
    sessions = {ANY_STATE.search(c.body).group(1) for c in service.tracking_comments(pr.number)}
    assert sessions == {failed, second}


def test_stop_on_the_check_run_cancels_the_session_and_refuses_a_reader(service):
    gh, api = service.github, service.anthropic
    gh.add_user("reader-rita", 7101)
    gh.add_collaborator(REPO, "reader-rita", "read")
    gh.add_user("writer-will", 7102)
    gh.add_collaborator(REPO, "writer-will", "write")
    pr = open_pull(service, "checks/stop")
    branches = gh.branches(REPO)
    release = threading.Event()
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}, hold=release),
            Text(SUMMARY),
        ]
    )
    try:
        session_id = service.comment(pr.number, "/claude slow change", pull=True).json()["session"]
        run = wait_for(
            lambda: (r := run_of(service, session_id)) and r.status == "in_progress" and r,
            120,
            what="the check run in progress",
        )
        wait_for(lambda: api.main_requests(), 120, what="Claude to start")

        # A reader's click, redelivered by GitHub and replayed: refused once, the session
        # runs on.
        delivery = f"stop-rita-{run.id}"
        rita = click(service, run, "requested_action", "reader-rita", 7101, delivery)
        assert (rita.status_code, rita.json()["status"]) == (202, "stopping")
        again = click(service, run, "requested_action", "reader-rita", 7101, delivery)
        replayed = click(service, run, "requested_action", "reader-rita", 7101)
        assert [again.json()["status"], replayed.json()["status"]] == ["duplicate", "duplicate"]

        def refusals():
            return [c for c in service.comments(pr.number) if c.body.startswith("🚫 @reader-rita")]

        wait_for(refusals, 120, what="the refusal of rita's stop")
        noted = wait_for(
            lambda: [
                s
                for s in run_of(service, session_id).history
                if "@reader-rita" in (s.summary or "")
            ],
            60,
            what="the refusal in the check run",
        )
        assert noted[0].status == "in_progress" and "write access" in (noted[0].summary or "")
        assert run_of(service, session_id).status == "in_progress"

        # A writer's click stops it: nothing pushed, the run cancelled.
        will = click(service, run, "requested_action", "writer-will", 7102)
        assert (will.status_code, will.json()["status"]) == (202, "stopping")
        final = final_of(service, pr.number, session_id, timeout=120)
    finally:
        release.set()
    assert "Stopped by @writer-will" in final.body, final.body
    assert len(refusals()) == 1
    ended = completed(service, session_id)
    assert (ended.conclusion, ended.history[-1].actions) == ("cancelled", ())
    assert ended.output["title"] == "Stopped by @writer-will."
    assert gh.branches(REPO) == branches
    assert not leftover_containers(session_id)


def test_a_checks_api_that_is_down_still_ends_the_session_in_its_comment(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "checks/down")
    gh.fail_next("*", r"/check-runs", 503, times=1000)
    try:
        api.script(
            [
                ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}),
                Text(SUMMARY),
            ]
        )
        session_id = service.comment(pr.number, "/claude say hello", pull=True).json()["session"]
        final = final_of(service, pr.number, session_id)
    finally:
        gh.clear_faults()
    assert "pushed a commit to `checks/down`" in final.body, final.body
    assert "state=done" in final.body
    assert run_of(service, session_id) is None
    assert gh.read_file(REPO, "checks/down", "greet.py") == HELLO
    assert f"session {session_id}: check run queue failed" in service.tail("worker", 400)


def test_every_checks_answer_of_these_sessions_matches_githubs_openapi(service):
    # Runs after the sessions above (file order).
    answered = [r for r in service.github.responses if r.template and "check-runs" in r.template]
    operations = {(r.method, r.template, r.status) for r in answered}
    assert ("POST", "/repos/{owner}/{repo}/check-runs", 201) in operations
    assert ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}", 200) in operations
    for spec in ("ghes-3.19", "api.github.com"):
        for r in answered:
            validate_response(r.method, r.template, r.status, r.body, spec=spec)
    assert not service.github.errors, service.github.errors
