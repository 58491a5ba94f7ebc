"""GitHub access for one session: an installation token scoped to one repository.

The worker mints its own token (the queue carries only ids), asks for the few permissions the
session needs, registers it with the redactor, and revokes it when the session ends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.exception import GitHubException, RequestFailed
from redis import Redis
from redis.exceptions import RedisError

from jobs.common.metrics import series
from jobs.common.redact import redactor
from jobs.common.retries import bounded_retry
from jobs.common.settings import WorkerSettings

log = logging.getLogger(__name__)

# What a session needs, and nothing more: a review never writes contents. `checks` for the
# session's check run on its pull request (jobs/github/checks.py); a config refresh has none.
ISSUE_SESSION_PERMISSIONS = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
    "metadata": "read",
}
REVIEW_SESSION_PERMISSIONS = {**ISSUE_SESSION_PERMISSIONS, "contents": "read"}
# `/claude fix ci` reads the head's check runs and its workflow jobs and their logs with a
# token of its own, read-only and revoked once read: the token that pushes never holds them.
CI_READ_PERMISSIONS = {"checks": "read", "actions": "read", "metadata": "read"}
READ_PERMISSIONS = {"contents": "read", "metadata": "read"}  # re-reading the repo's config
# Added to the App after installations were made: each installation grants it only once its
# owner accepts the new permissions, and until then a session runs without what it serves.
OPTIONAL_PERMISSIONS = ("checks", "actions")


def _client(api_url: str, auth, hooks: dict | None = None, follow_redirects: bool = True) -> GitHub:
    # http_cache off: a revalidating cache only adds requests for a short-lived session.
    return GitHub(
        auth,
        base_url=api_url,
        http_cache=False,
        timeout=30,
        auto_retry=bounded_retry,
        event_hooks=hooks,
        follow_redirects=follow_redirects,
    )


_RESOURCE = re.compile(r"[a-z_]{1,40}")


class RateLimitSeen:
    """An httpx response hook: the installation's X-RateLimit-Remaining, for the metrics."""

    def __init__(self, installation_id: int) -> None:
        self.installation = str(installation_id)

    def __call__(self, response: httpx.Response) -> None:
        remaining = response.headers.get("x-ratelimit-remaining", "")
        if not remaining.isdigit():
            return
        resource = response.headers.get("x-ratelimit-resource", "core")
        resource = resource if _RESOURCE.fullmatch(resource) else "other"
        gauge = series().rate_limit_remaining.labels(self.installation, resource)
        gauge.set(int(remaining))


class LogUnavailable(Exception):
    """A job's log could not be had (expired, not yet written, or no download offered)."""


# Read at most this much of one log download: a runaway job's log is never held whole.
MAX_DOWNLOAD = 64 * 2**20


def download_tail(url: str, max_bytes: int) -> tuple[str, bool]:
    """The last `max_bytes` of a plain-text download (no credentials sent), as text, and
    whether anything before them was left out."""
    kept = bytearray()
    cut = False
    read = 0
    try:
        with httpx.stream("GET", url, timeout=30, follow_redirects=False) as answer:
            if answer.status_code != 200:
                raise LogUnavailable(f"the log download answered {answer.status_code}")
            for chunk in answer.iter_bytes():
                kept += chunk
                read += len(chunk)
                if len(kept) > max_bytes:
                    del kept[: len(kept) - max_bytes]
                    cut = True
                if read >= MAX_DOWNLOAD:
                    cut = True
                    break
    except httpx.HTTPError as exc:
        raise LogUnavailable(f"the log download failed ({type(exc).__name__})") from None
    return kept.decode("utf-8", errors="replace"), cut


def app_client(settings: WorkerSettings) -> GitHub:
    auth = AppAuthStrategy(str(settings.github_app_id), settings.private_key)
    return _client(settings.github_api_url, auth)


@dataclass(frozen=True)
class BotIdentity:
    login: str
    user_id: int | None
    noreply_domain: str

    @property
    def email(self) -> str:
        prefix = f"{self.user_id}+" if self.user_id else ""
        return f"{prefix}{self.login}@{self.noreply_domain}"


def noreply_domain(api_url: str) -> str:
    host = urlparse(api_url).hostname or "github.com"
    if host in ("api.github.com", "github.com"):
        return "users.noreply.github.com"
    return f"users.noreply.{host}"


BOT_TTL = 24 * 3600  # an App's slug can be renamed; a day-old name still commits correctly


def bot_key(settings: WorkerSettings) -> str:
    return f"claudecluster:bot:{settings.github_api_url}:{settings.github_app_id or 0}"


def bot_identity(settings: WorkerSettings, session: RepoSession, redis: Redis) -> BotIdentity:
    """The App's bot user, which authors commits: asked of GitHub once a day per App, and kept
    in Redis (RQ forks a process per job, so a cache in the process lasts one session).

    The slug needs the App's JWT (`GET /app`); the user lookup needs an installation token.
    """
    domain = noreply_domain(settings.github_api_url)
    with contextlib.suppress(RedisError, ValueError, TypeError, KeyError):
        known = json.loads(redis.get(bot_key(settings)) or b"null")
        if known:
            return BotIdentity(str(known["login"]), int(known["user_id"]), domain)
    app = app_client(settings)
    login = f"{app.rest.apps.get_authenticated().json()['slug']}[bot]"
    try:
        user_id = session.gh.rest.users.get_by_username(login).json()["id"]
    except GitHubException:
        # Attribution still works by login; GitHub links the id-less noreply form too.
        return BotIdentity(login, None, domain)
    with contextlib.suppress(RedisError):
        redis.set(bot_key(settings), json.dumps({"login": login, "user_id": user_id}), ex=BOT_TTL)
    return BotIdentity(login, user_id, domain)


class RepoSession:
    """A GitHub client for one repository, holding one scoped installation token."""

    def __init__(
        self, settings: WorkerSettings, installation_id: int, repo: str, permissions: dict[str, str]
    ) -> None:
        self.owner, self.name = repo.split("/", 1)
        # Keep the client in a variable: `.rest` holds only a weak reference to it.
        app = app_client(settings)
        minted = self._mint(app, installation_id, permissions)
        self.token: str = minted["token"]
        redactor.add(self.token)
        self.permissions: dict[str, str] = dict(minted.get("permissions") or {})
        self.gh = _client(
            settings.github_api_url,
            TokenAuthStrategy(self.token),
            {"response": [RateLimitSeen(installation_id)]},
        )
        # For the answers that are a redirect to a download elsewhere (a job's log): read the
        # Location ourselves, so the token never follows it.
        self._pointer = _client(
            settings.github_api_url, TokenAuthStrategy(self.token), follow_redirects=False
        )

    def _mint(self, app: GitHub, installation_id: int, permissions: dict[str, str]) -> dict:
        def mint(wanted: dict[str, str]) -> dict:
            data = {"repositories": [self.name], "permissions": wanted}
            return app.rest.apps.create_installation_access_token(installation_id, data=data).json()

        # The newest optional permission is the likeliest not yet granted: go without it
        # first, then without the older ones too.
        attempts = [permissions]
        for newest in range(len(OPTIONAL_PERMISSIONS) - 1, -1, -1):
            left_out = OPTIONAL_PERMISSIONS[newest:]
            fewer = {k: v for k, v in permissions.items() if k not in left_out}
            if fewer != attempts[-1]:
                attempts.append(fewer)
        for wanted, fewer in itertools.pairwise(attempts):
            try:
                return mint(wanted)
            except RequestFailed as exc:
                if exc.response.status_code != 422:
                    raise
                log.warning(
                    "installation %s has not granted %s yet: this session goes without",
                    installation_id,
                    ", ".join(sorted(set(wanted) - set(fewer))),
                )
        return mint(attempts[-1])

    def holds(self, permission: str, level: str = "write") -> bool:
        """Whether the minted token has `permission` at `level` (write also reads)."""
        granted = self.permissions.get(permission)
        return granted == level or (level == "read" and granted == "write")

    def repository(self) -> dict:
        return self.gh.rest.repos.get(self.owner, self.name).json()

    def issue(self, number: int) -> dict:
        return self.gh.rest.issues.get(self.owner, self.name, number).json()

    def react(self, comment_id: int, content: str) -> None:
        self.gh.rest.reactions.create_for_issue_comment(
            self.owner, self.name, comment_id, data={"content": content}
        )

    def comment(self, number: int, body: str) -> dict:
        return self.gh.rest.issues.create_comment(
            self.owner, self.name, number, data={"body": body}
        ).json()

    def edit_comment(self, comment_id: int, body: str) -> None:
        self.gh.rest.issues.update_comment(self.owner, self.name, comment_id, data={"body": body})

    def open_pull(self, title: str, head: str, base: str, body: str, draft: bool = False) -> dict:
        data = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        return self.gh.rest.pulls.create(self.owner, self.name, data=data).json()

    def permission(self, login: str) -> str:
        """The user's role on the repository (none/read/triage/write/maintain/admin)."""
        data = self.gh.rest.repos.get_collaborator_permission_level(
            self.owner, self.name, login
        ).json()
        return str(data.get("role_name") or data.get("permission") or "none")

    def issue_comments(self, number: int, limit: int = 100) -> list[dict]:
        return self.gh.rest.issues.list_comments(
            self.owner, self.name, number, per_page=limit
        ).json()

    def pull(self, number: int) -> dict:
        return self.gh.rest.pulls.get(self.owner, self.name, number).json()

    def pull_diff(self, number: int) -> str:
        return self.gh.rest.pulls.get(
            self.owner, self.name, number, headers={"Accept": "application/vnd.github.diff"}
        ).text

    def review_comment(self, comment_id: int) -> dict:
        return self.gh.rest.pulls.get_review_comment(self.owner, self.name, comment_id).json()

    def review_comments(self, number: int, limit: int = 100) -> list[dict]:
        return self.gh.rest.pulls.list_review_comments(
            self.owner, self.name, number, per_page=limit
        ).json()

    def comments_of_review(self, number: int, review_id: int) -> list[dict]:
        return self.gh.rest.pulls.list_comments_for_review(
            self.owner, self.name, number, review_id, per_page=100
        ).json()

    def react_review_comment(self, comment_id: int, content: str) -> None:
        self.gh.rest.reactions.create_for_pull_request_review_comment(
            self.owner, self.name, comment_id, data={"content": content}
        )

    def reply_review_comment(self, number: int, comment_id: int, body: str) -> dict:
        return self.gh.rest.pulls.create_reply_for_review_comment(
            self.owner, self.name, number, comment_id, data={"body": body}
        ).json()

    def edit_review_comment(self, comment_id: int, body: str) -> None:
        self.gh.rest.pulls.update_review_comment(
            self.owner, self.name, comment_id, data={"body": body}
        )

    def create_review(self, number: int, review: dict) -> dict:
        return self.gh.rest.pulls.create_review(self.owner, self.name, number, data=review).json()

    def create_check_run(self, data: dict) -> dict:
        return self.gh.rest.checks.create(self.owner, self.name, data=data).json()

    def update_check_run(self, check_run_id: int, data: dict) -> None:
        self.gh.rest.checks.update(self.owner, self.name, check_run_id, data=data)

    def check_runs_for(self, sha: str, limit: int = 100) -> list[dict]:
        """The newest check run of each name on commit `sha` (GitHub's `filter=latest`)."""
        return self.gh.rest.checks.list_for_ref(
            self.owner, self.name, sha, filter_="latest", per_page=limit
        ).json()["check_runs"]

    def workflow_runs_for(self, sha: str, limit: int = 50) -> list[dict]:
        return self.gh.rest.actions.list_workflow_runs_for_repo(
            self.owner, self.name, head_sha=sha, per_page=limit
        ).json()["workflow_runs"]

    def jobs_of_run(self, run_id: int, limit: int = 100) -> list[dict]:
        return self.gh.rest.actions.list_jobs_for_workflow_run(
            self.owner, self.name, run_id, filter_="latest", per_page=limit
        ).json()["jobs"]

    def job_log(self, job_id: int, max_bytes: int) -> tuple[str, bool]:
        """The end of a job's plain-text log, at most `max_bytes`, and whether it was cut.

        GitHub answers with a 302 to a signed download URL on another host; that URL is the
        credential, so it is fetched by a client of its own that sends no token and follows no
        further redirect."""
        pointer = self._pointer.rest.actions.download_job_logs_for_workflow_run(
            self.owner, self.name, job_id
        )
        location = pointer.headers.get("location", "")
        if pointer.status_code != 302 or urlparse(location).scheme not in ("https", "http"):
            raise LogUnavailable(f"no log download for job {job_id}")
        return download_tail(location, max_bytes)

    def revoke(self) -> None:
        self.gh.rest.apps.revoke_installation_access_token()
