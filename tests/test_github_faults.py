"""GitHub API faults against the stand-in: retried with bounded, header-honouring backoff."""

from __future__ import annotations

import time

import pytest
from githubkit.exception import RateLimitExceeded, RequestFailed

from jobs.common.settings import WorkerSettings
from jobs.github.client import ISSUE_SESSION_PERMISSIONS, RepoSession
from tests.standins.github import GitHubStandIn

REPO = "octo-org/faulty"


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(5, "octo-org")
        gh.add_repo(REPO, 5)
        gh.add_issue(REPO, 1, "t", "b", "octocat", 583231)
        yield gh


@pytest.fixture
def session(github):
    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
    )
    return RepoSession(settings, 5, REPO, ISSUE_SESSION_PERMISSIONS)


def attempts(github, method: str, tail: str) -> int:
    return sum(1 for r in github.requests if r.method == method and r.path.endswith(tail))


def test_server_errors_are_retried_with_backoff(github, session):
    before = attempts(github, "POST", "/issues/1/comments")
    github.fail_next("POST", r"/issues/1/comments$", 502, times=2)
    started = time.monotonic()
    session.comment(1, "hello")
    assert attempts(github, "POST", "/issues/1/comments") - before == 3
    assert 2.5 < time.monotonic() - started < 10  # 1 s, then 2 s


def test_a_short_secondary_rate_limit_is_waited_out(github, session):
    github.fail_next(
        "POST",
        r"/issues/1/comments$",
        403,
        headers={"retry-after": "1"},
        body={"message": "You have exceeded a secondary rate limit."},
    )
    started = time.monotonic()
    session.comment(1, "after the limit")
    assert time.monotonic() - started >= 1


def test_a_long_rate_limit_fails_at_once_instead_of_holding_the_worker(github, session):
    github.fail_next("POST", r"/issues/1/comments$", 429, headers={"retry-after": "3600"})
    started = time.monotonic()
    with pytest.raises(RateLimitExceeded):
        session.comment(1, "would wait an hour")
    assert time.monotonic() - started < 5


def test_persistent_server_errors_give_up_after_three_retries(github, session):
    github.fail_next("GET", r"/issues/1$", 503, times=5)
    before = attempts(github, "GET", "/issues/1")
    with pytest.raises(RequestFailed):
        session.issue(1)
    assert attempts(github, "GET", "/issues/1") - before == 4
    session.issue(1)  # the fifth fault, then the real answer: nothing left over


def test_client_errors_are_not_retried(github, session):
    github.fail_next("POST", r"/issues/1/comments$", 422)
    before = attempts(github, "POST", "/issues/1/comments")
    with pytest.raises(RequestFailed):
        session.comment(1, "refused")
    assert attempts(github, "POST", "/issues/1/comments") - before == 1


def test_the_bot_identity_is_asked_of_github_once_per_app_for_every_process(github, redis_url):
    # RQ forks a process per job: a cache inside the process would ask GitHub every session.
    from redis import Redis

    from jobs.github.client import bot_identity

    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(github.app_id),
        GITHUB_PRIVATE_KEY=github.private_key_pem,
        GITHUB_API_URL=github.api_url,
    )
    redis = Redis.from_url(redis_url)
    before = attempts(github, "GET", "/app")
    identities = [
        bot_identity(settings, RepoSession(settings, 5, REPO, ISSUE_SESSION_PERMISSIONS), redis)
        for _ in range(3)
    ]
    assert attempts(github, "GET", "/app") - before == 1
    assert len(set(identities)) == 1 and identities[0].login == github.bot_login
    assert identities[0].user_id and identities[0].email.startswith(f"{identities[0].user_id}+")
