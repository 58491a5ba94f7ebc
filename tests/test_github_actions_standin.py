"""Workflow runs, jobs and job logs on the GitHub stand-in, and `/claude fix ci`'s reader of them.

Every response is checked against GitHub's OpenAPI description as the stand-in's other endpoints
are (tests/test_github_standin.py `validate_all`). A job's log comes as GitHub serves it: a 302
to a signed plain-text download elsewhere, which refuses a request carrying a token; the reader
(jobs/github/ci.py over jobs/github/client.py) follows it without one, keeps only the tail of
each log and redacts it.
"""

from __future__ import annotations

import secrets
import string

import httpx
import pytest

from jobs.common.redact import REDACTED
from jobs.common.settings import WorkerSettings
from jobs.github.ci import LOG_TAIL, LOGS_TOTAL, read_ci
from jobs.github.client import (
    CI_READ_PERMISSIONS,
    ISSUE_SESSION_PERMISSIONS,
    LogUnavailable,
    RepoSession,
)
from tests.standins.github import GitHubStandIn
from tests.standins.github_actions import ACTIONS_ROUTES, LOG_PATH, NewJob
from tests.test_github_standin import openapi_specs, validate_all

__all__ = ["openapi_specs"]  # the fixture, shared with the stand-in's own tests

OWNER, NAME = "octo-org", "pipes"
REPO = f"{OWNER}/{NAME}"
INSTALLATION = 77
PERMISSIONS = {**ISSUE_SESSION_PERMISSIONS, "actions": "read"}


def fake_github_token() -> str:
    """A personal-access-token-shaped string, made at run time (never a literal in the repo)."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


@pytest.fixture
def github(openapi_specs):
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, OWNER, permissions=PERMISSIONS)
        gh.add_repo(REPO, INSTALLATION, files={"README.md": "# pipes\n"})
        yield gh
        assert gh.errors == [], "stand-in raised:\n" + "\n".join(gh.errors)
        validate_all(gh, openapi_specs)


def session_for(github: GitHubStandIn, permissions: dict[str, str]) -> RepoSession:
    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
    )
    return RepoSession(settings, INSTALLATION, REPO, permissions)


def head(github: GitHubStandIn) -> str:
    return github.branches(REPO)["main"]


def test_every_actions_endpoint_answers_as_github_does(github):
    sha = head(github)
    run = github.add_workflow_run(
        REPO,
        sha,
        [NewJob("lint", "success", log="all clean\n"), NewJob("tests", log="FAILED test_x\n")],
    )
    reader = session_for(github, CI_READ_PERMISSIONS)
    runs = reader.workflow_runs_for(sha)
    assert [r["id"] for r in runs] == [run.id]
    assert (runs[0]["status"], runs[0]["conclusion"]) == ("completed", "failure")
    assert reader.workflow_runs_for("0" * 40) == []
    jobs = reader.jobs_of_run(run.id)
    assert [(j["name"], j["conclusion"]) for j in jobs] == [
        ("lint", "success"),
        ("tests", "failure"),
    ]
    one = reader.gh.rest.actions.get_job_for_workflow_run(OWNER, NAME, jobs[1]["id"]).json()
    assert [s["conclusion"] for s in one["steps"]] == ["success", "failure"]
    # Each job shows as a check run of the GitHub Actions App, whose id is the job's.
    checks = {c["name"]: c for c in reader.check_runs_for(sha)}
    assert checks["tests"]["id"] == jobs[1]["id"]
    assert checks["tests"]["app"]["slug"] == "github-actions"
    assert jobs[1]["check_run_url"].endswith(f"/check-runs/{jobs[1]['id']}")
    assert reader.job_log(jobs[1]["id"], 1000) == ("FAILED test_x\n", False)
    seen = {(r.method, r.template, r.status) for r in github.responses}
    for method, template in ACTIONS_ROUTES:
        assert any(m == method and t == template and s < 400 for m, t, s in seen), template
    assert ("GET", "/repos/{owner}/{repo}/actions/jobs/{job_id}/logs", 302) in seen


def test_actions_need_the_actions_permission_and_the_repository(github):
    sha = head(github)
    run = github.add_workflow_run(REPO, sha, [NewJob("tests", log="x\n")])
    job = run.jobs[0].id
    without = session_for(github, ISSUE_SESSION_PERMISSIONS)
    for call in (
        lambda: without.workflow_runs_for(sha),
        lambda: without.jobs_of_run(run.id),
        lambda: without.job_log(job, 100),
    ):
        with pytest.raises(Exception, match="403") as failed:
            call()
        assert failed.value.response.headers["X-Accepted-GitHub-Permissions"] == "actions=read"
    reader = session_for(github, CI_READ_PERMISSIONS)
    unknown = reader.gh.rest.actions.get_job_for_workflow_run
    with pytest.raises(Exception, match="404"):
        unknown(OWNER, NAME, job + 1)


def test_the_log_redirect_is_followed_without_the_token(github):
    """The attack: a client that sends its token to the download URL. The stand-in's blob store
    refuses it, as a signed URL does; ours sends none, and never follows a further redirect."""
    run = github.add_workflow_run(REPO, head(github), [NewJob("tests", log="boom\n")])
    job = run.jobs[0].id
    reader = session_for(github, CI_READ_PERMISSIONS)

    pointer = httpx.get(
        f"{github.api_url}/repos/{REPO}/actions/jobs/{job}/logs",
        headers={"Authorization": f"token {reader.token}"},
    )
    assert pointer.status_code == 302
    location = pointer.headers["location"]
    assert LOG_PATH in location and "urlSignature=" in location
    careless = httpx.get(location, headers={"Authorization": f"token {reader.token}"})
    assert careless.status_code == 400 and "Authorization" in careless.text
    tampered = httpx.get(location.replace("urlSignature=", "urlSignature=0"))
    assert tampered.status_code == 403
    assert github.log_downloads[-1].authorization is None

    before = len(github.log_downloads)
    assert reader.job_log(job, 100) == ("boom\n", False)
    ours = github.log_downloads[before:]
    assert [(d.status, d.authorization) for d in ours] == [(200, None)]


def test_a_log_with_no_download_says_so(github):
    run = github.add_workflow_run(REPO, head(github), [NewJob("tests", conclusion=None)])
    reader = session_for(github, CI_READ_PERMISSIONS)
    with pytest.raises(Exception, match="404"):
        reader.job_log(run.jobs[0].id, 100)
    github.fail_next(
        "GET", r"/actions/jobs/\d+/logs$", 302, headers={"Location": "file:///etc/passwd"}, body=b""
    )
    done = github.add_workflow_run(REPO, head(github), [NewJob("again", log="x\n")])
    with pytest.raises(LogUnavailable):
        reader.job_log(done.jobs[0].id, 100)


def test_the_reader_keeps_failures_only_bounds_and_redacts_their_logs(github):
    sha = head(github)
    secret = fake_github_token()
    noise = "".join(
        f"2026-12-04T04:00:{i % 60:02d}.1234567Z step output line {i}\n" for i in range(3000)
    )
    failing = noise + f"2026-12-04T04:01:00.0000000Z leaked {secret}\nError: test_add failed\n"
    github.add_workflow_run(
        REPO,
        sha,
        [
            NewJob("lint", "success", log="fine\n"),
            NewJob("tests", log=failing),
            NewJob("types", "timed_out", (("mypy", "timed_out"),), log="y" * 50_000),
            NewJob("docs", "cancelled", log="stopped\n"),
        ],
    )
    # Our own check run on the same head (a session's, failed earlier) is no failure to fix.
    writer = session_for(github, PERMISSIONS)
    writer.create_check_run(
        {
            "name": "Claude",
            "head_sha": sha,
            "external_id": "session-abc",
            "conclusion": "failure",
            "output": {"title": "Claude could not finish", "summary": "x"},
        }
    )
    reader = session_for(github, CI_READ_PERMISSIONS)
    listed = {(c["name"], c["conclusion"]) for c in reader.check_runs_for(sha)}
    assert ("Claude", "failure") in listed, "the control: our run is there to be left out"
    report = read_ci(reader, sha, github.app_id)
    failures = sorted(report.failures, key=lambda f: f.name)
    assert [(f.name, f.conclusion) for f in failures] == [
        ("tests", "failure"),
        ("types", "timed_out"),
    ]
    assert report.passed == 2  # lint, and docs (cancelled is not a failure to fix)
    tests, types = failures
    assert tests.failed_steps == ["Run tests"] and types.failed_steps == ["mypy"]
    assert tests.log.endswith("Error: test_add failed\n")
    assert secret not in tests.log and f"leaked {REDACTED}" in tests.log
    assert "2026-12-04T04:01:00" not in tests.log, "Actions' time stamps are dropped"
    assert len(tests.log) <= LOG_TAIL and 0 < len(types.log) <= LOG_TAIL
    assert set(types.log) == {"y"}
    assert len(tests.log) + len(types.log) <= LOGS_TOTAL
    assert "step output line 0\n" not in tests.log and tests.note
    assert tests.summary == "Process completed with exit code 1."


def test_without_actions_read_the_reader_names_the_failures_without_logs(github):
    sha = head(github)
    github.add_workflow_run(REPO, sha, [NewJob("tests", log="hidden\n")])
    reader = session_for(github, {"checks": "read", "metadata": "read"})
    [failure] = read_ci(reader, sha, github.app_id).failures
    assert (failure.name, failure.log) == ("tests", "")
    assert "actions: read" in failure.note


def test_an_installation_without_actions_read_still_reads_the_checks(github):
    """Installed before `actions: read` was in app.yml: the token goes without actions only."""
    github.add_installation(78, "old-org", permissions=dict(ISSUE_SESSION_PERMISSIONS))
    github.add_repo("old-org/pipes", 78)
    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
    )
    reader = RepoSession(settings, 78, "old-org/pipes", CI_READ_PERMISSIONS)
    assert reader.holds("checks", "read") and not reader.holds("actions", "read")
    asked = [r.body.get("permissions") for r in github.token_requests if r.installation_id == 78]
    assert asked == [CI_READ_PERMISSIONS, {"checks": "read", "metadata": "read"}]


def test_a_secret_cut_by_the_logs_tail_leaves_no_part_behind(github):
    """The download keeps the log's last bytes: when they begin inside a secret, the redactor
    cannot recognise what is left of it, so the cut line goes."""
    sha = head(github)
    secret = fake_github_token()
    kept = 2 * LOG_TAIL  # what the reader downloads of one log
    line = "2026-12-04T04:00:00.0000000Z ok\n"
    body = line * ((kept - 10) // len(line))
    body = "x" * (kept - 10 - len(body)) + body  # exactly kept - 10 bytes after the secret's line
    log = f"2026-12-04T04:00:00.0000000Z token {secret}\n" + body
    github.add_workflow_run(REPO, sha, [NewJob("tests", log=log)])
    [failure] = read_ci(session_for(github, CI_READ_PERMISSIONS), sha, github.app_id).failures
    assert failure.log.endswith("ok\n") and "only the end" in failure.note
    assert secret[-9:] not in failure.log
