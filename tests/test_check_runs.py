"""The session's check run (jobs/github/checks.py) as the tracking comment drives it, against the
GitHub stand-in: a real installation token, the real Checks API calls, GitHub's validation.

The whole service (a real session in the sandbox, Stop and Re-run clicked) is in
tests/e2e/test_check_runs.py.
"""

from __future__ import annotations

import re

import pytest

from jobs.common.request import SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.checks import CheckRun, title_of
from jobs.github.client import ISSUE_SESSION_PERMISSIONS, RepoSession
from jobs.github.tracking import TrackingComment
from jobs.sandbox.transcript import Outcome
from tests.standins.github import GitHubStandIn
from tests.standins.github_pulls import NewPull

INSTALLATION, OLD_INSTALLATION = 5, 6
REPO, OLD_REPO = "octo-org/checked", "old-org/unchecked"


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, "octo-org")
        gh.add_repo(REPO, INSTALLATION)
        gh.add_user("octocat", 583231)
        # Installed before the App asked for `checks`; its owner has not accepted it yet.
        gh.add_installation(
            OLD_INSTALLATION,
            "old-org",
            permissions={"contents": "write", "issues": "write", "pull_requests": "write"},
        )
        gh.add_repo(OLD_REPO, OLD_INSTALLATION)
        yield gh
        assert gh.errors == []


def settings_for(github: GitHubStandIn) -> WorkerSettings:
    return WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
    )


def session_parts(github, repo: str, installation: int, number: int, pull: bool):
    request = SessionRequest(
        delivery_id=f"d-{repo}-{number}",
        installation_id=installation,
        repo=repo,
        number=number,
        requester="octocat",
        requester_id=583231,
        instruction="tidy up",
        pull=pull,
    )
    client = RepoSession(settings_for(github), installation, repo, ISSUE_SESSION_PERMISSIONS)
    check = CheckRun(client, request, f"session-{number}")
    tracking = TrackingComment(client, request, f"session-{number}", check=check)
    return client, check, tracking


def done(result: str = "Tidied the README.") -> Outcome:
    return Outcome(is_error=False, result=result, num_turns=3, cost_usd=0.0123, finished=True)


def test_a_pull_requests_session_is_queued_then_in_progress_with_stop_then_its_outcome(github):
    pr = github.add_pull(REPO, NewPull("tidy", files={"a.txt": "a\n"}))
    _, check, tracking = session_parts(github, REPO, INSTALLATION, pr.number, pull=True)
    tracking.start()
    check.queue()
    check.start()
    tracking.stop_refused("mallory", "write")
    tracking.pushed("tidy", f"{github.url}/{REPO}/commit/abc", ["M\ta.txt"], done())

    [run] = github.check_runs_of(REPO)
    assert (run.name, run.head_sha, run.external_id) == ("Claude", pr.head_sha, "session-1")
    states = [(s.status, s.conclusion, s.actions) for s in run.history]
    assert states == [
        ("queued", None, ()),
        ("in_progress", None, ("stop",)),
        ("in_progress", None, ("stop",)),
        ("completed", "success", ()),
    ]
    refused = run.history[2].summary or ""
    assert "@mallory" in refused and "write access" in refused
    final = run.history[-1]
    assert final.title == "Claude pushed a commit to `tidy`"
    summary = final.summary or ""
    assert "Tidied the README." in summary and f"{github.url}/{REPO}/commit/abc" in summary
    assert re.search(r"⏱ \d+s · 3 turns · \$0\.0123", summary), summary
    assert run.started_at is not None and run.completed_at is not None


def test_a_stopped_session_is_cancelled_and_a_failed_one_says_why(github):
    stopped = github.add_pull(REPO, NewPull("stopped", files={"b.txt": "b\n"}))
    _, check, tracking = session_parts(github, REPO, INSTALLATION, stopped.number, pull=True)
    tracking.start()
    check.queue()
    check.start()
    tracking.stopped("octocat")
    failed = github.add_pull(REPO, NewPull("failed", files={"c.txt": "c\n"}))
    _, check, tracking = session_parts(github, REPO, INSTALLATION, failed.number, pull=True)
    tracking.start()
    check.queue()
    check.start()
    tracking.failed("the repository's setup commands failed: exit 7")
    ends = {
        run.head_sha: (run.conclusion, run.output["title"], run.output["summary"])
        for run in github.check_runs_of(REPO)
    }
    assert ends[stopped.head_sha][:2] == ("cancelled", "Stopped by @octocat.")
    conclusion, title, summary = ends[failed.head_sha]
    assert (conclusion, title) == ("failure", "Claude could not finish this.")
    assert "setup commands failed: exit 7" in (summary or "")


def test_an_issue_session_shows_its_run_on_the_pull_request_it_opens(github):
    github.add_issue(REPO, 40, "Docs", "Write docs", "octocat", 583231)
    client, check, tracking = session_parts(github, REPO, INSTALLATION, 40, pull=False)
    tracking.start()
    check.queue()  # an issue has no pull request: nothing yet
    check.start()
    before = len(github.check_runs_of(REPO))
    pr = github.add_pull(REPO, NewPull("claude/issue-40-docs", files={"d.md": "d\n"}))
    opened = client.pull(pr.number)
    tracking.pull_request_opened(opened, done("Wrote the docs."))
    runs = github.check_runs_of(REPO)
    assert len(runs) == before + 1
    run = runs[-1]
    assert (run.head_sha, run.status, run.conclusion) == (pr.head_sha, "completed", "success")
    assert [s.status for s in run.history] == ["completed"]
    assert run.output["title"] == f"Claude opened #{pr.number}"


def test_an_installation_that_has_not_granted_checks_runs_its_session_without_a_run(github):
    pr = github.add_pull(OLD_REPO, NewPull("old", files={"e.txt": "e\n"}))
    client, check, tracking = session_parts(github, OLD_REPO, OLD_INSTALLATION, pr.number, True)
    asked = [t for t in github.token_requests if t.installation_id == OLD_INSTALLATION]
    assert [t.status for t in asked] == [422, 201]  # refused with checks, granted without
    assert "checks" not in asked[-1].body["permissions"]
    assert not client.holds("checks") and client.holds("contents")
    tracking.start()
    check.queue()
    check.start()
    tracking.pushed("old", "https://example.test/commit", ["M\te.txt"], done())
    assert github.check_runs_of(OLD_REPO) == []
    assert not [r for r in github.requests if f"{OLD_REPO}/check-runs" in r.path]
    assert "state=done" in github.comments[-1].body


@pytest.mark.parametrize("status", [403, 422])
def test_a_checks_api_that_refuses_never_keeps_the_session_from_its_final_comment(github, status):
    pr = github.add_pull(REPO, NewPull(f"refused-{status}", files={"f.txt": "f\n"}))
    _, check, tracking = session_parts(github, REPO, INSTALLATION, pr.number, pull=True)
    tracking.start()
    github.fail_next("*", r"/check-runs", status, times=10)
    try:
        check.queue()
        check.start()
        tracking.pushed(f"refused-{status}", "https://example.test/c", ["M\tf.txt"], done())
    finally:
        github.clear_faults()
    final = [c for c in github.comments if c.issue_number == pr.number][-1]
    assert "Claude pushed a commit" in final.body and "state=done" in final.body
    assert not [r for r in github.check_runs_of(REPO) if r.head_sha == pr.head_sha]


def test_a_title_is_the_headlines_plain_words():
    assert title_of("✅ **Claude opened #5**: https://x/pull/5") == "Claude opened #5"
    assert title_of("💡 **Claude suggested 2 changes** in [a review](u)") == (
        "Claude suggested 2 changes"
    )
    assert title_of("no bold here") == "no bold here"


def test_a_fork_pull_requests_run_is_on_the_forks_head_and_lists_no_pull_request(github):
    pr = github.add_pull(
        REPO,
        NewPull(
            "fork-fix",
            files={"g.txt": "g\n"},
            user_login="mallory",
            fork_full_name="mallory/checked",
        ),
    )
    client, check, tracking = session_parts(github, REPO, INSTALLATION, pr.number, pull=True)
    tracking.start()
    check.queue()
    [run] = [r for r in github.check_runs_of(REPO) if r.external_id == f"session-{pr.number}"]
    assert run.head_sha == client.pull(pr.number)["head"]["sha"] == pr.head_sha
    # GitHub lists only pull requests whose head is in the repository itself.
    assert github.check_run_json(run.id)["pull_requests"] == []


def test_a_check_runs_output_is_redacted_as_comments_are(github):
    pr = github.add_pull(REPO, NewPull("leaky", files={"h.txt": "h\n"}))
    client, check, tracking = session_parts(github, REPO, INSTALLATION, pr.number, pull=True)
    tracking.start()
    check.queue()
    check.start()
    tracking.failed(f"git said: https://x-access-token:{client.token}@example.test failed")
    [run] = [r for r in github.check_runs_of(REPO) if r.head_sha == pr.head_sha]
    shown = "".join(f"{s.title}{s.summary}" for s in run.history)
    assert client.token not in shown and "[redacted]" in shown
