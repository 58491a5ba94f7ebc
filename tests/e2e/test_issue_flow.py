"""`/claude` on an issue, end to end: comment → queue → worker → sandboxed claude → PR + comment."""

from __future__ import annotations

import re
import time

from redis import Redis
from rq.job import Job

from tests.e2e.conftest import FINAL, INSTALLATION, MODEL_KEY, REPO, leftover_containers
from tests.standins.anthropic import Fail, Text, ToolUse
from tests.standins.openapi import validate_response
from tests.support import issue_comment_payload, wait_for

CONTRIBUTING = "# Contributing\n\nRun the tests with `pytest -q` from the repository root.\n"
SUMMARY = "Added CONTRIBUTING.md, which explains how to run the tests with `pytest -q`."


def session_of(comment) -> str:
    return FINAL.search(comment.body).group(1)


def test_comment_opens_a_pull_request_with_the_scripted_change(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Document how to run the tests")
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/CONTRIBUTING.md", "content": CONTRIBUTING}),
            # Claude thinks a while: long enough for a progress edit showing what it did.
            ToolUse("Bash", {"command": "ls"}, delay=6),
            Text(SUMMARY),
        ]
    )
    instruction = "add a CONTRIBUTING.md that explains how to run the tests"
    resp = service.comment(number, f"/claude {instruction}")
    assert resp.status_code == 202, resp.text

    final = service.wait_final(number)
    session_id = session_of(final)
    pulls = service.pulls_for(number)
    assert len(pulls) == 1, service.tail("worker")
    pull = pulls[0]
    branch = pull.head_ref
    assert re.fullmatch(rf"claude/issue-{number}-document-how-to-run-the-tests", branch)
    assert pull.base_ref == "main"
    assert pull.user.login == gh.bot_login
    assert SUMMARY in pull.body
    assert gh.read_file(REPO, branch, "CONTRIBUTING.md") == CONTRIBUTING
    assert gh.read_file(REPO, "main", "CONTRIBUTING.md") is None

    # The tracking comment was edited into the outcome: PR link, summary, turns, cost.
    body = final.body
    assert f"Claude opened #{pull.number}" in body and f"/pull/{pull.number}" in body
    assert SUMMARY in body
    assert re.search(r"· 3 turns · \$0\.\d{4}", body), body
    assert "working on this" not in body
    # Live progress: the comment was edited through the steps before it became final.
    patches = [r.json for r in gh.requests if r.method == "PATCH" and r.json]
    edits = [p["body"] for p in patches if session_id in str(p.get("body"))]
    assert any("**Running Claude** ⏳" in e and "- [x] Preparing the workspace" in e for e in edits)
    assert any("**Running Claude** ⏳" in e and "`Write CONTRIBUTING.md`" in e for e in edits)
    # Progress edits are made off the session's path (jobs/github/progress.py): none after the
    # final one, and none for the push, which is over before a step is shown.
    assert edits[-1] == body
    assert not any("**Pushing the changes** ⏳" in e for e in edits)
    assert len(service.tracking_comments(number)) == 1
    trigger = service.comments(number)[0]
    assert [r.content for r in gh.reactions if r.comment_id == trigger.id] == ["eyes"]

    # The commit is the bot's, crediting the person who asked.
    log = gh.git(REPO, "log", "-1", "--format=%an <%ae>%n%B", branch)
    assert log.startswith(f"{gh.app_slug}[bot] <")
    assert "Co-authored-by: octocat <583231+octocat@users.noreply" in log

    # The token was scoped to this repository and the session's permissions, then revoked.
    mint = [t for t in gh.token_requests if t.installation_id == INSTALLATION][-1]
    assert mint.body["repositories"] == ["hello-world"]
    assert mint.body["permissions"] == {
        "checks": "write",
        "contents": "write",
        "issues": "write",
        "pull_requests": "write",
        "metadata": "read",
    }
    # Revocation is the session's last step, just after the final edit.
    wait_for(lambda: gh.token_info(mint.token).revoked, 15, what="the token's revocation")

    # The model saw the instruction, and only the gateway held the real key.
    main = api.main_requests()
    assert main and instruction in main[0].user_text()
    assert all(r.api_key == MODEL_KEY for r in api.requests)
    assert not leftover_containers(session_id)
    assert not [p for p in gh.pushes if p.forced]


def test_answer_without_edits_opens_nothing(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Is there a test suite?")
    before = gh.branches(REPO)
    answer = "Yes: tests/test_math.py holds the suite, run it with pytest. Nothing to change."
    api.script([Text(answer)])
    assert service.comment(number, "/claude is there a test suite?").status_code == 202

    final = service.wait_final(number)
    assert "No changes were needed" in final.body
    assert answer in final.body
    assert gh.branches(REPO) == before
    assert not service.pulls_for(number)
    assert not leftover_containers(session_of(final))


def test_model_api_failure_is_reported_and_cleaned_up(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Break things")
    before = gh.branches(REPO)
    api.script([Fail(401, "authentication_error", "invalid x-api-key")])
    assert service.comment(number, "/claude make a change").status_code == 202

    final = service.wait_final(number)
    body = final.body
    assert "could not finish" in body and "state=failed" in body
    assert MODEL_KEY not in body and "ccgw-" not in body
    assert gh.branches(REPO) == before
    assert not service.pulls_for(number)
    assert not leftover_containers(session_of(final))
    api.script([])


def test_same_delivery_three_times_runs_one_session(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Add a changelog")
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/CHANGELOG.md", "content": "# Changelog\n"}),
            Text("Added CHANGELOG.md."),
        ]
    )
    delivery = f"redelivered-{number}"
    codes = [
        service.comment(number, "/claude add a changelog", delivery).status_code for _ in range(3)
    ]
    assert codes == [202, 200, 200]

    service.wait_final(number)
    time.sleep(2)  # a duplicate session would have posted its own comment by now
    assert len(service.tracking_comments(number)) == 1
    assert len(service.pulls_for(number)) == 1
    assert len([b for b in gh.branches(REPO) if b.startswith(f"claude/issue-{number}-")]) == 1


def test_bad_signature_is_refused_and_starts_nothing(service):
    gh = service.github
    number = service.new_issue("Unsigned")
    mints = len(gh.token_requests)
    payload = issue_comment_payload(REPO, number, "/claude do it", INSTALLATION)
    resp = service.deliver(payload, delivery=f"forged-{number}", secret="someone-elses-secret")
    assert resp.status_code == 401
    redis = Redis.from_url(service.redis_url)
    assert not Job.exists(f"session-forged-{number}", connection=redis)
    assert not redis.exists(f"claudecluster:delivery:forged-{number}")
    time.sleep(3)  # had anything been queued, the worker would have commented by now
    assert service.comments(number) == []
    assert len(gh.token_requests) == mints


def test_every_github_answer_of_these_flows_matches_githubs_openapi(service):
    # Runs after the flows above (file order): the stand-in must not have taught the service
    # anything GitHub would not say.
    # Raw media types (a pull request's diff) are text, not the JSON the schemas describe.
    responses = [
        r
        for r in service.github.responses
        if r.template and "param=" not in r.headers.get("X-GitHub-Media-Type", "")
    ]
    operations = {(r.method, r.template) for r in responses}
    assert ("POST", "/app/installations/{installation_id}/access_tokens") in operations
    assert ("POST", "/repos/{owner}/{repo}/pulls") in operations
    assert ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}") in operations
    failures = []
    for spec in ("ghes-3.19", "api.github.com"):
        for r in responses:
            try:
                validate_response(r.method, r.template, r.status, r.body, spec=spec)
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures[:5])
    assert not service.github.errors, service.github.errors
