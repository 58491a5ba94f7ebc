"""`/claude fix ci` end to end on real parts: the failing check's log reaches the real CLI's
model (the stand-in records the prompt), the fix is pushed to the head branch (a fork's comes
back as suggestions), nothing failing runs nothing, an issue gets a clear answer, and the log
is bounded and redacted on its way, fetched without the token from where GitHub redirects.
"""

from __future__ import annotations

import json
import secrets
import string
import time

import docker
import pytest

from jobs.sandbox.container import LABEL
from jobs.sandbox.pool import claimed_name
from tests.e2e.conftest import FINAL
from tests.standins.anthropic import Text, ToolUse
from tests.standins.github_actions import LOG_PATH, NewJob
from tests.standins.github_pulls import NewPull
from tests.support import issue_comment_payload, pull_event_payload

CI_INSTALLATION = 4343
CI_REPO = "ci-org/calculator"
BROKEN = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n"


@pytest.fixture(scope="module")
def ci_repo(github):
    """A repository whose installation granted `actions: read` (the e2e one was made before)."""
    github.add_installation(
        CI_INSTALLATION,
        "ci-org",
        permissions={
            "actions": "read",
            "checks": "write",
            "contents": "write",
            "issues": "write",
            "pull_requests": "write",
            "metadata": "read",
        },
    )
    github.add_repo(
        CI_REPO,
        CI_INSTALLATION,
        files={
            "calc.py": FIXED,
            "test_calc.py": TEST,
            ".github/claude.yml": "labels:\n  fix-me: fix-ci\n  claude: implement\n",
        },
    )
    github.add_collaborator(CI_REPO, "octocat", "write")
    return CI_REPO


def fake_secret() -> str:
    """A token-shaped string a workflow might print, made at run time."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


def comment(service, number: int, body: str, pull: bool = True):
    seeded = service.github.add_comment(CI_REPO, number, body, "octocat")
    payload = issue_comment_payload(CI_REPO, number, body, CI_INSTALLATION, user_id=seeded.user.id)
    payload["comment"]["id"] = seeded.id
    stamp = seeded.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    payload["comment"]["created_at"] = payload["comment"]["updated_at"] = stamp
    if pull:
        payload["issue"]["pull_request"] = {"url": f"{service.github.api_url}/pulls/{number}"}
    return service.deliver(payload)


def failing_log(marker: str, secret: str) -> str:
    """An Actions log: thousands of lines of noise, then the failure (and a leaked secret)."""
    noise = "".join(
        f"2026-12-04T04:00:00.{i:07d}Z collecting noise line {i}\n" for i in range(4000)
    )
    return noise + (
        f"2026-12-04T04:00:01.0000000Z GITHUB_TOKEN={secret}\n"
        "2026-12-04T04:00:01.1000000Z     def test_add():\n"
        f"2026-12-04T04:00:01.2000000Z >       assert add(2, 2) == 4  # {marker}\n"
        "2026-12-04T04:00:01.3000000Z E       assert 0 == 4\n"
        "2026-12-04T04:00:01.4000000Z ##[error]Process completed with exit code 1.\n"
    )


def sandboxes_taken(session_id: str, since: float) -> list[dict]:
    """The Docker engine's own record of sandboxes the session took: a fresh one created with
    its label, or a warm one renamed after it (jobs/sandbox/pool.py)."""
    client = docker.from_env()
    events = client.api.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "container", "event": ["create", "rename"]},
        decode=True,
    )
    fresh = ("create", LABEL, session_id)
    warm = ("rename", "name", claimed_name(session_id))
    return [
        event
        for event in events
        for action, attribute, value in (fresh, warm)
        if event["Action"] == action
        and ((event.get("Actor") or {}).get("Attributes") or {}).get(attribute) == value
    ]


def test_a_failing_checks_log_reaches_the_model_and_the_fix_is_pushed(service, ci_repo):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        ci_repo,
        NewPull("feature/subtract", title="Refactor add", body="", files={"calc.py": BROKEN}),
    )
    head = gh.branches(ci_repo)["feature/subtract"]
    marker = f"failing-line-{secrets.token_hex(6)}"
    secret = fake_secret()
    run = gh.add_workflow_run(
        ci_repo,
        head,
        [
            NewJob("lint", "success", log="all clean\n"),
            NewJob(
                "tests",
                steps=(("Set up job", "success"), ("Run pytest", "failure")),
                log=failing_log(marker, secret),
            ),
        ],
        head_branch="feature/subtract",
    )
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/calc.py", "content": FIXED}),
            Text("add() subtracted; it adds again, so test_add passes."),
        ]
    )
    started = time.time()
    assert comment(service, pr.number, "/claude fix ci").status_code == 202

    final = service.wait_final(pr.number, repo=ci_repo)
    assert "pushed a commit to `feature/subtract`" in final.body, final.body
    # The control of the next test's probe: this session's sandbox shows in Docker's events.
    assert sandboxes_taken(FINAL.search(final.body).group(1), started)
    message = gh.git(ci_repo, "log", "-1", "--format=%s", "feature/subtract").strip()
    assert message == f"Fix the failing checks of #{pr.number}"
    assert gh.read_file(ci_repo, "feature/subtract", "calc.py") == FIXED
    assert gh.git(ci_repo, "rev-parse", "feature/subtract~1").strip() == head
    assert not [p for p in gh.pushes if p.forced]

    prompt = api.main_requests()[0].user_text()
    assert '<check_run name="tests" conclusion="failure">' in prompt
    assert f"assert add(2, 2) == 4  # {marker}" in prompt, "the failing line reached the model"
    assert "Failed steps: Run pytest" in prompt
    assert "collecting noise line 0\n" not in prompt, "only the log's tail is shown"
    assert '<check_run name="lint"' not in prompt, "a passing check is no failure"
    # The secret a workflow printed is redacted before anyone sees it.
    for request in api.requests:
        assert secret not in json.dumps(request.body)
    assert all(secret not in c.body for c in service.comments(pr.number, ci_repo))
    assert secret not in service.log_text()

    # The log came from the signed URL GitHub redirects to, without the token.
    job = run.jobs[1].id
    fetched = [d for d in gh.log_downloads if d.path == f"{LOG_PATH}{job}/signedlogcontent"]
    assert [(d.status, d.authorization) for d in fetched] == [(200, None)]


def test_nothing_failing_says_so_and_starts_no_sandbox(service, ci_repo):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        ci_repo, NewPull("feature/green", title="Docs", body="", files={"NOTES.md": "# n\n"})
    )
    head = gh.branches(ci_repo)["feature/green"]
    gh.add_workflow_run(ci_repo, head, [NewJob("tests", "success", log="1 passed\n")])
    started = time.time()
    assert comment(service, pr.number, "/claude fix ci").status_code == 202

    final = service.wait_final(pr.number, repo=ci_repo)
    assert "No check is failing" in final.body and head[:12] in final.body, final.body
    assert api.requests == [], "the model was never asked"
    session_id = FINAL.search(final.body).group(1)
    assert sandboxes_taken(session_id, started) == [], "no sandbox was started"
    (ours,) = [r for r in gh.check_runs_of(ci_repo) if r.external_id == session_id]
    assert ours.conclusion == "neutral"


def test_fix_ci_on_an_issue_answers_that_it_needs_a_pull_request(service, ci_repo):
    gh, api = service.github, service.anthropic
    taken = [i.number for i in gh.issues] + [p.number for p in gh.pulls]
    number = max([199, *taken]) + 1
    gh.add_issue(ci_repo, number, "Tests fail", "CI is red.", "octocat", 583231)
    assert comment(service, number, "/claude fix ci", pull=False).status_code == 202

    final = service.wait_final(number, repo=ci_repo)
    assert "`fix ci` needs a pull request" in final.body, final.body
    assert api.requests == []


def test_the_fix_ci_label_on_a_forks_pull_request_offers_the_fix_as_suggestions(service, ci_repo):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        ci_repo,
        NewPull(
            "patch-1",
            title="Refactor add",
            body="",
            files={"calc.py": BROKEN},
            fork_full_name="stranger/calculator",
        ),
    )
    head = gh.git(ci_repo, "rev-parse", f"refs/pull/{pr.number}/head").strip()
    marker = f"fork-line-{secrets.token_hex(6)}"
    gh.add_workflow_run(ci_repo, head, [NewJob("tests", log=failing_log(marker, fake_secret()))])
    branches_before = gh.branches(ci_repo)
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/calc.py", "content": FIXED}),
            Text("Restored the addition."),
        ]
    )
    payload = pull_event_payload(
        "labeled", ci_repo, pr.number, CI_INSTALLATION, labels=["fix-me"], label="fix-me"
    )
    assert service.deliver(payload, event="pull_request").status_code == 202

    final = service.wait_final(pr.number, repo=ci_repo)
    assert "suggested 1 change" in final.body, final.body
    assert gh.branches(ci_repo) == branches_before, "nothing is pushed for a fork"
    (review,) = [
        r for r in gh.reviews if r.pull.full_name == ci_repo and r.pull.number == pr.number
    ]
    (suggestion,) = [c for c in gh.review_comments if c.review_id == review.id]
    assert "return a + b" in suggestion.body
    prompt = api.main_requests()[0].user_text()
    assert marker in prompt
    # The label asked: the instruction is ours, not anything the fork wrote.
    assert "Make the failing checks of this pull request's head pass." in prompt


def test_an_installation_that_grants_no_checks_is_told_so_and_nothing_runs(service):
    """Installed before `checks` and `actions` were in app.yml, and not accepted since."""
    gh, api = service.github, service.anthropic
    repo = "old-org/calculator"
    gh.add_installation(
        4344,
        "old-org",
        permissions={"contents": "write", "issues": "write", "pull_requests": "write"},
    )
    gh.add_repo(repo, 4344, files={"calc.py": FIXED})
    gh.add_collaborator(repo, "octocat", "write")
    pr = gh.add_pull(repo, NewPull("feature/x", title="x", body="", files={"calc.py": BROKEN}))
    gh.add_workflow_run(repo, gh.branches(repo)["feature/x"], [NewJob("tests", log="red\n")])
    seeded = gh.add_comment(repo, pr.number, "/claude fix ci", "octocat")
    payload = issue_comment_payload(repo, pr.number, "/claude fix ci", 4344, user_id=seeded.user.id)
    payload["comment"]["id"] = seeded.id
    payload["issue"]["pull_request"] = {"url": f"{gh.api_url}/pulls/{pr.number}"}
    assert service.deliver(payload).status_code == 202

    final = service.wait_final(pr.number, repo=repo)
    assert "cannot read this pull request's checks" in final.body, final.body
    assert "accept the new permissions" in final.body
    assert api.requests == []
