"""State records and JSON builders for the GitHub stand-in.

Every builder returns a *full* GitHub object as the REST API serialises it (the same keys
GitHub sends, including the optional ones it sends by default), shaped like GitHub
Enterprise Server: API URLs under ``{url}/api/v3``, web URLs under ``{url}``. The bodies are
checked against GitHub's OpenAPI description (``tests/standins/openapi.py``) and parsed
with githubkit's typed models in ``tests/test_github_standin.py``.
"""

from __future__ import annotations

import base64
import itertools
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from .github_git import CommitInfo, FileChange, TreeEntry

REACTION_CONTENTS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
PERMISSION_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}
ROLE_TO_LEGACY = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
ROLE_ORDER = ("none", "read", "triage", "write", "maintain", "admin")
MAX_CONTENT_SIZE = 1024 * 1024  # the contents API inlines files up to 1 MB
MAX_COMMENT_BODY = 65536
DEFAULT_LABELS = {  # name -> (color, description), as GitHub creates them in a new repository
    "bug": ("d73a4a", "Something isn't working"),
    "documentation": ("0075ca", "Improvements or additions to documentation"),
    "duplicate": ("cfd3d7", "This issue or pull request already exists"),
    "enhancement": ("a2eeef", "New feature or request"),
    "good first issue": ("7057ff", "Good for newcomers"),
    "help wanted": ("008672", "Extra attention is needed"),
    "invalid": ("e4e669", "This doesn't seem right"),
    "question": ("d876e3", "Further information is requested"),
    "wontfix": ("ffffff", "This will not be worked on"),
}


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(prefix: str, number: int) -> str:
    raw = b"\x93\x00\xce" + number.to_bytes(8, "big")
    return f"{prefix}_kwDO{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def commit_node_id(repo_id: int, sha: str) -> str:
    raw = b"\x92\xce" + repo_id.to_bytes(4, "big") + bytes.fromhex(sha)
    return f"C_kwDO{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def wrapped_base64(data: bytes) -> str:
    """Base64 as the contents API sends it: lines of 60 characters, each ending in a newline."""
    text = base64.b64encode(data).decode()
    return "".join(f"{text[i : i + 60]}\n" for i in range(0, len(text), 60))


class Ids:
    """Independent id sequences per object kind, with GitHub-like magnitudes."""

    def __init__(self) -> None:
        self._counters = {
            "repo": itertools.count(700_000_001),
            "issue": itertools.count(2_100_000_001),
            "comment": itertools.count(3_200_000_001),
            "reaction": itertools.count(250_000_001),
            "pull": itertools.count(1_900_000_001),
            "review": itertools.count(2_600_000_001),
            "review_comment": itertools.count(1_700_000_001),
            "user": itertools.count(95_000_001),
        }

    def next(self, kind: str) -> int:
        return next(self._counters[kind])


# --------------------------------------------------------------------------- state


@dataclass
class User:
    login: str
    id: int
    type: str = "User"  # "User" | "Bot" | "Organization"
    name: str | None = None
    email: str | None = None
    site_admin: bool = False
    created_at: datetime = field(default_factory=now)


@dataclass
class Installation:
    id: int
    account: User
    permissions: dict[str, str]
    repository_selection: str = "selected"
    events: list[str] = field(default_factory=lambda: ["issue_comment", "issues"])
    created_at: datetime = field(default_factory=now)


@dataclass
class Repo:
    id: int
    owner: User
    name: str
    installation_id: int | None  # None: the App is not installed there (e.g. a user's fork)
    default_branch: str
    private: bool
    path: Path
    description: str | None = None
    collaborators: dict[str, str] = field(default_factory=dict)  # login -> role
    created_at: datetime = field(default_factory=now)
    pushed_at: datetime = field(default_factory=now)
    parent: Repo | None = None  # the upstream repository of a fork

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"

    @property
    def fork(self) -> bool:
        return self.parent is not None


@dataclass
class Issue:
    id: int
    repo: Repo
    number: int
    title: str
    body: str | None
    user: User
    state: str = "open"
    labels: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    closed_at: datetime | None = None
    is_pull: bool = False


@dataclass
class Comment:
    id: int
    repo: Repo
    issue_number: int
    user: User
    body: str
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)

    @property
    def full_name(self) -> str:
        return self.repo.full_name


@dataclass
class Reaction:
    id: int
    comment_id: int
    user: User
    content: str
    created_at: datetime = field(default_factory=now)
    subject: str = "issue_comment"  # or "review_comment"


@dataclass
class PullRequest:
    id: int
    repo: Repo
    number: int
    title: str
    body: str | None
    user: User
    head_ref: str
    head_sha: str  # at creation; the live value comes from the bare repository
    base_ref: str
    base_sha: str
    draft: bool = False
    state: str = "open"
    maintainer_can_modify: bool = False
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    head_repo: Repo | None = None  # None: the base repository itself; else a fork
    labels: list[str] = field(default_factory=list)  # shared with the issue twin

    def __post_init__(self) -> None:
        if self.head_repo is None:
            self.head_repo = self.repo

    @property
    def full_name(self) -> str:
        return self.repo.full_name

    @property
    def head_repository(self) -> Repo:
        assert self.head_repo is not None
        return self.head_repo

    @property
    def is_fork(self) -> bool:
        return self.head_repository is not self.repo

    @property
    def pull_ref(self) -> str:
        """The ref GitHub keeps in the base repository for the head: ``refs/pull/N/head``."""
        return f"refs/pull/{self.number}/head"


@dataclass
class Review:
    id: int
    pull: PullRequest
    user: User
    body: str
    state: str  # PENDING | COMMENTED | APPROVED | CHANGES_REQUESTED | DISMISSED
    commit_id: str
    submitted_at: datetime | None = field(default_factory=now)

    @property
    def full_name(self) -> str:
        return self.pull.full_name

    @property
    def pull_number(self) -> int:
        return self.pull.number


@dataclass(frozen=True)
class PullView:
    """A pull request's live state as one caller sees it: its head and base commits, its
    author's association, and the caller's permissions on the base and (None: not visible)
    the head repository."""

    head_sha: str
    base_sha: str
    author_association: str
    repo_permissions: dict[str, bool]
    head_permissions: dict[str, bool] | None = None


@dataclass
class ReviewComment:
    """An inline comment on a pull request's diff (a "pull request review comment")."""

    id: int
    pull: PullRequest
    review_id: int
    user: User
    body: str
    path: str
    commit_id: str
    diff_hunk: str
    position: int  # GitHub's diff position in the file's patch
    line: int
    side: str  # LEFT | RIGHT
    start_line: int | None = None
    start_side: str | None = None
    in_reply_to_id: int | None = None
    original_commit_id: str = ""
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)

    def __post_init__(self) -> None:
        self.original_commit_id = self.original_commit_id or self.commit_id

    @property
    def full_name(self) -> str:
        return self.pull.full_name

    @property
    def pull_number(self) -> int:
        return self.pull.number


@dataclass
class Token:
    token: str
    installation_id: int
    repository_ids: frozenset[int] | None  # None: every repository of the installation
    permissions: dict[str, str]
    repository_selection: str
    expires_at: datetime
    created_at: datetime = field(default_factory=now)
    revoked: bool = False

    def allows(self, permission: str, level: str) -> bool:
        have = PERMISSION_LEVELS.get(self.permissions.get(permission, "none"), 0)
        return have >= PERMISSION_LEVELS[level]


@dataclass
class PRStats:
    commits: int = 0
    additions: int = 0
    deletions: int = 0
    changed_files: int = 0


class ApiError(Exception):
    """A REST error the stand-in answers with (see ``Objects.error`` for the body)."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


# --------------------------------------------------------------------------- builders


class Objects:
    """Builds GitHub JSON objects for a stand-in reachable at ``base_url``."""

    def __init__(self, base_url: str, app: dict[str, Any]):
        self.web = base_url.rstrip("/")
        self.api = f"{self.web}/api/v3"
        self.host = self.web.split("://", 1)[-1]
        self.app = app  # id, slug, name, owner (User), permissions, events, created_at, client_id

    # users ----------------------------------------------------------------

    def simple_user(self, user: User) -> dict[str, Any]:
        api = f"{self.api}/users/{user.login}"
        if user.type == "Bot":
            html = f"{self.web}/apps/{user.login.removesuffix('[bot]')}"
        else:
            html = f"{self.web}/{user.login}"
        org = user.type == "Organization"
        return {
            "login": user.login,
            "id": user.id,
            "node_id": node_id({"Bot": "BOT", "Organization": "O"}.get(user.type, "U"), user.id),
            "avatar_url": f"{self.web}/avatars/u/{user.id}?",
            "gravatar_id": "",
            "url": f"{self.api}/orgs/{user.login}" if org else api,
            "html_url": html,
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{self.api}/orgs/{user.login}/repos" if org else f"{api}/repos",
            "events_url": f"{self.api}/orgs/{user.login}/events"
            if org
            else f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": user.type,
            "user_view_type": "public",
            "site_admin": user.site_admin,
        }

    def public_user(self, user: User, public_repos: int = 0) -> dict[str, Any]:
        return {
            **self.simple_user(user),
            "name": user.name,
            "company": None,
            "blog": "",
            "location": None,
            "email": user.email,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": public_repos,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": iso(user.created_at),
            "updated_at": iso(user.created_at),
        }

    def collaborator(self, user: User, role: str) -> dict[str, Any]:
        rank = ROLE_ORDER.index(role)
        return {
            **self.simple_user(user),
            "permissions": {
                "admin": rank >= ROLE_ORDER.index("admin"),
                "maintain": rank >= ROLE_ORDER.index("maintain"),
                "push": rank >= ROLE_ORDER.index("write"),
                "triage": rank >= ROLE_ORDER.index("triage"),
                "pull": rank >= ROLE_ORDER.index("read"),
            },
            "role_name": role,
        }

    def collaborator_permission(self, user: User, role: str) -> dict[str, Any]:
        return {
            "permission": ROLE_TO_LEGACY[role],
            "role_name": role,
            "user": self.collaborator(user, role),
        }

    # app ------------------------------------------------------------------

    def integration(self, installations_count: int) -> dict[str, Any]:
        app = self.app
        return {
            "id": app["id"],
            "client_id": app["client_id"],
            "slug": app["slug"],
            "node_id": node_id("A", app["id"]),
            "owner": self.simple_user(app["owner"]),
            "name": app["name"],
            "description": app["description"],
            "external_url": app["external_url"],
            "html_url": f"{self.web}/github-apps/{app['slug']}",
            "created_at": iso(app["created_at"]),
            "updated_at": iso(app["created_at"]),
            "permissions": dict(app["permissions"]),
            "events": list(app["events"]),
            "installations_count": installations_count,
        }

    def installation(self, inst: Installation) -> dict[str, Any]:
        account = inst.account
        org = account.type == "Organization"
        if org:
            html = f"{self.web}/organizations/{account.login}/settings/installations/{inst.id}"
        else:
            html = f"{self.web}/settings/installations/{inst.id}"
        return {
            "id": inst.id,
            "client_id": self.app["client_id"],
            "account": self.simple_user(account),
            "repository_selection": inst.repository_selection,
            "access_tokens_url": f"{self.api}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{self.api}/installation/repositories",
            "html_url": html,
            "app_id": self.app["id"],
            "app_slug": self.app["slug"],
            "target_id": account.id,
            "target_type": account.type,
            "permissions": dict(inst.permissions),
            "events": list(inst.events),
            "created_at": iso(inst.created_at),
            "updated_at": iso(inst.created_at),
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    def installation_token(
        self, token: Token, repos: list[Repo] | None, token_permissions: dict[str, bool]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token": token.token,
            "expires_at": iso(token.expires_at),
            "permissions": dict(token.permissions),
            "repository_selection": token.repository_selection,
        }
        if repos is not None:
            body["repositories"] = [self.repository(r, token_permissions) for r in repos]
        return body

    # repositories ------------------------------------------------------------

    def repository(self, repo: Repo, permissions: dict[str, bool] | None = None) -> dict[str, Any]:
        api = f"{self.api}/repos/{repo.full_name}"
        web = f"{self.web}/{repo.full_name}"
        body: dict[str, Any] = {
            "id": repo.id,
            "node_id": node_id("R", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self.simple_user(repo.owner),
            "html_url": web,
            "description": repo.description,
            "fork": repo.fork,
            "url": api,
            "forks_url": f"{api}/forks",
            "keys_url": f"{api}/keys{{/key_id}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "teams_url": f"{api}/teams",
            "hooks_url": f"{api}/hooks",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "events_url": f"{api}/events",
            "assignees_url": f"{api}/assignees{{/user}}",
            "branches_url": f"{api}/branches{{/branch}}",
            "tags_url": f"{api}/tags",
            "blobs_url": f"{api}/git/blobs{{/sha}}",
            "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "trees_url": f"{api}/git/trees{{/sha}}",
            "statuses_url": f"{api}/statuses/{{sha}}",
            "languages_url": f"{api}/languages",
            "stargazers_url": f"{api}/stargazers",
            "contributors_url": f"{api}/contributors",
            "subscribers_url": f"{api}/subscribers",
            "subscription_url": f"{api}/subscription",
            "commits_url": f"{api}/commits{{/sha}}",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "comments_url": f"{api}/comments{{/number}}",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "merges_url": f"{api}/merges",
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "downloads_url": f"{api}/downloads",
            "issues_url": f"{api}/issues{{/number}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "labels_url": f"{api}/labels{{/name}}",
            "releases_url": f"{api}/releases{{/id}}",
            "deployments_url": f"{api}/deployments",
            "created_at": iso(repo.created_at),
            "updated_at": iso(repo.pushed_at),
            "pushed_at": iso(repo.pushed_at),
            "git_url": f"git://{self.host}/{repo.full_name}.git",
            "ssh_url": f"git@{self.host}:{repo.full_name}.git",
            "clone_url": f"{web}.git",
            "svn_url": web,
            "homepage": None,
            "size": 1,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": None,
            "has_issues": True,
            "has_projects": True,
            "has_downloads": True,
            "has_wiki": True,
            "has_pages": False,
            "has_discussions": False,
            "forks_count": 0,
            "mirror_url": None,
            "archived": False,
            "disabled": False,
            "open_issues_count": 0,
            "license": None,
            "allow_forking": True,
            "is_template": False,
            "web_commit_signoff_required": False,
            "topics": [],
            "visibility": "private" if repo.private else "public",
            "forks": 0,
            "open_issues": 0,
            "watchers": 0,
            "default_branch": repo.default_branch,
        }
        if permissions is not None:
            body["permissions"] = dict(permissions)
        return body

    def full_repository(
        self, repo: Repo, permissions: dict[str, bool], open_issues: int
    ) -> dict[str, Any]:
        body = self.repository(repo, permissions)
        body.update(
            {
                "open_issues_count": open_issues,
                "open_issues": open_issues,
                "temp_clone_token": None,
                "template_repository": None,
                "anonymous_access_enabled": False,
                "allow_squash_merge": True,
                "allow_merge_commit": True,
                "allow_rebase_merge": True,
                "allow_auto_merge": False,
                "delete_branch_on_merge": False,
                "allow_update_branch": False,
                "use_squash_pr_title_as_default": False,
                "squash_merge_commit_message": "COMMIT_MESSAGES",
                "squash_merge_commit_title": "COMMIT_OR_PR_TITLE",
                "merge_commit_message": "PR_TITLE",
                "merge_commit_title": "MERGE_MESSAGE",
                "network_count": 0,
                "subscribers_count": 1,
            }
        )
        if repo.owner.type == "Organization":
            body["organization"] = self.simple_user(repo.owner)
            body["custom_properties"] = {}
        if repo.parent is not None:
            source = repo.parent
            while source.parent is not None:
                source = source.parent
            body["parent"] = self.repository(repo.parent)
            body["source"] = self.repository(source)
        return body

    # issues and comments ---------------------------------------------------------

    def reaction_rollup(self, url: str, reactions: list[Reaction]) -> dict[str, Any]:
        rollup: dict[str, Any] = {"url": f"{url}/reactions", "total_count": len(reactions)}
        for content in REACTION_CONTENTS:
            rollup[content] = sum(1 for r in reactions if r.content == content)
        return rollup

    def issue(
        self,
        issue: Issue,
        comment_count: int,
        author_association: str,
    ) -> dict[str, Any]:
        repo_api = f"{self.api}/repos/{issue.repo.full_name}"
        url = f"{repo_api}/issues/{issue.number}"
        kind = "pull" if issue.is_pull else "issues"
        body: dict[str, Any] = {
            "url": url,
            "repository_url": repo_api,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": f"{self.web}/{issue.repo.full_name}/{kind}/{issue.number}",
            "id": issue.id,
            "node_id": node_id("PR" if issue.is_pull else "I", issue.id),
            "number": issue.number,
            "title": issue.title,
            "user": self.simple_user(issue.user),
            "labels": [self.label(issue.repo, name) for name in issue.labels],
            "state": issue.state,
            "locked": False,
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": comment_count,
            "created_at": iso(issue.created_at),
            "updated_at": iso(issue.updated_at),
            "closed_at": iso(issue.closed_at),
            "author_association": author_association,
            "type": None,
            "active_lock_reason": None,
            "sub_issues_summary": {"total": 0, "completed": 0, "percent_completed": 0},
            "issue_dependencies_summary": {
                "blocked_by": 0,
                "blocking": 0,
                "total_blocked_by": 0,
                "total_blocking": 0,
            },
            "body": issue.body,
            "closed_by": None,
            "reactions": self.reaction_rollup(url, []),
            "timeline_url": f"{url}/timeline",
            "performed_via_github_app": None,
            "state_reason": None,
            "pinned_comment": None,
        }
        if issue.is_pull:
            pulls = f"{self.web}/{issue.repo.full_name}/pull/{issue.number}"
            body["draft"] = False
            body["pull_request"] = {
                "url": f"{repo_api}/pulls/{issue.number}",
                "html_url": pulls,
                "diff_url": f"{pulls}.diff",
                "patch_url": f"{pulls}.patch",
                "merged_at": None,
            }
        return body

    def label(self, repo: Repo, name: str) -> dict[str, Any]:
        """A label; GitHub's default labels come with their colour and description. (Every
        label gets a string description: the pull-request-simple schema has no null there.)"""
        label_id = zlib.crc32(f"{repo.full_name}:{name}".encode())
        color, description = DEFAULT_LABELS.get(name, ("ededed", ""))
        return {
            "id": label_id,
            "node_id": node_id("LA", label_id),
            "url": f"{self.api}/repos/{repo.full_name}/labels/{quote(name)}",
            "name": name,
            "color": color,
            "default": name in DEFAULT_LABELS,
            "description": description,
            "archived_by": None,  # newer descriptions (githubkit's models) require it
        }

    def issue_comment(
        self,
        comment: Comment,
        reactions: list[Reaction],
        author_association: str,
        is_pull: bool,
    ) -> dict[str, Any]:
        repo_api = f"{self.api}/repos/{comment.full_name}"
        url = f"{repo_api}/issues/comments/{comment.id}"
        kind = "pull" if is_pull else "issues"
        return {
            "url": url,
            "html_url": (
                f"{self.web}/{comment.full_name}/{kind}/{comment.issue_number}"
                f"#issuecomment-{comment.id}"
            ),
            "issue_url": f"{repo_api}/issues/{comment.issue_number}",
            "id": comment.id,
            "node_id": node_id("IC", comment.id),
            "user": self.simple_user(comment.user),
            "created_at": iso(comment.created_at),
            "updated_at": iso(comment.updated_at),
            "body": comment.body,
            "author_association": author_association,
            "reactions": self.reaction_rollup(url, reactions),
            "performed_via_github_app": None,
            "pin": None,
            "minimized": None,
        }

    def reaction(self, reaction: Reaction) -> dict[str, Any]:
        return {
            "id": reaction.id,
            "node_id": node_id("REA", reaction.id),
            "user": self.simple_user(reaction.user),
            "content": reaction.content,
            "created_at": iso(reaction.created_at),
        }

    # pull requests -----------------------------------------------------------------

    def _pull_base(self, pr: PullRequest, view: PullView) -> dict[str, Any]:
        head_sha, base_sha = view.head_sha, view.base_sha
        author_association = view.author_association
        repo_permissions, head_permissions = view.repo_permissions, view.head_permissions
        repo_api = f"{self.api}/repos/{pr.full_name}"
        url = f"{repo_api}/pulls/{pr.number}"
        html = f"{self.web}/{pr.full_name}/pull/{pr.number}"
        issue_url = f"{repo_api}/issues/{pr.number}"
        head_repo = pr.head_repository
        base_obj = self.repository(pr.repo, repo_permissions)
        if head_repo is pr.repo:
            head_obj = base_obj
        else:
            head_obj = self.repository(head_repo, head_permissions)
        return {
            "url": url,
            "id": pr.id,
            "node_id": node_id("PR", pr.id),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": issue_url,
            "number": pr.number,
            "state": pr.state,
            "locked": False,
            "title": pr.title,
            "user": self.simple_user(pr.user),
            "body": pr.body,
            "created_at": iso(pr.created_at),
            "updated_at": iso(pr.updated_at),
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "labels": [self.label(pr.repo, name) for name in pr.labels],
            "milestone": None,
            "draft": pr.draft,
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{repo_api}/pulls/comments{{/number}}",
            "comments_url": f"{issue_url}/comments",
            "statuses_url": f"{repo_api}/statuses/{head_sha}",
            "head": {
                "label": f"{head_repo.owner.login}:{pr.head_ref}",
                "ref": pr.head_ref,
                "sha": head_sha,
                "user": self.simple_user(head_repo.owner),
                "repo": head_obj,
            },
            "base": {
                "label": f"{pr.repo.owner.login}:{pr.base_ref}",
                "ref": pr.base_ref,
                "sha": base_sha,
                "user": self.simple_user(pr.repo.owner),
                "repo": base_obj,
            },
            "_links": {
                "self": {"href": url},
                "html": {"href": html},
                "issue": {"href": issue_url},
                "comments": {"href": f"{issue_url}/comments"},
                "review_comments": {"href": f"{url}/comments"},
                "review_comment": {"href": f"{repo_api}/pulls/comments{{/number}}"},
                "commits": {"href": f"{url}/commits"},
                "statuses": {"href": f"{repo_api}/statuses/{head_sha}"},
            },
            "author_association": author_association,
            "auto_merge": None,
            "active_lock_reason": None,
        }

    def pull_request_simple(self, pr: PullRequest, view: PullView) -> dict[str, Any]:
        return self._pull_base(pr, view)

    def pull_request(
        self,
        pr: PullRequest,
        view: PullView,
        stats: PRStats,
        comment_count: int,
        review_comment_count: int = 0,
    ) -> dict[str, Any]:
        body = self._pull_base(pr, view)
        body.update(
            {
                "merged": False,
                "mergeable": None,
                "rebaseable": None,
                "mergeable_state": "unknown",
                "merged_by": None,
                "comments": comment_count,
                "review_comments": review_comment_count,
                "maintainer_can_modify": pr.maintainer_can_modify,
                "commits": stats.commits,
                "additions": stats.additions,
                "deletions": stats.deletions,
                "changed_files": stats.changed_files,
            }
        )
        return body

    def diff_entry(self, repo: Repo, head_sha: str, change: FileChange) -> dict[str, Any]:
        """One file of ``GET …/pulls/{n}/files`` (URLs name the base repository, which holds
        the head commits under ``refs/pull/N/head``)."""
        path = quote(change.filename)
        body: dict[str, Any] = {
            "sha": change.sha,
            "filename": change.filename,
            "status": change.status,
            "additions": change.additions,
            "deletions": change.deletions,
            "changes": change.changes,
            "blob_url": f"{self.web}/{repo.full_name}/blob/{head_sha}/{path}",
            "raw_url": f"{self.web}/{repo.full_name}/raw/{head_sha}/{path}",
            "contents_url": f"{self.api}/repos/{repo.full_name}/contents/{path}?ref={head_sha}",
        }
        if change.patch is not None:
            body["patch"] = change.patch
        if change.previous_filename is not None:
            body["previous_filename"] = change.previous_filename
        return body

    def commit(
        self, repo: Repo, info: CommitInfo, author: User | None, committer: User | None
    ) -> dict[str, Any]:
        api = f"{self.api}/repos/{repo.full_name}"
        web = f"{self.web}/{repo.full_name}"
        return {
            "sha": info.sha,
            "node_id": commit_node_id(repo.id, info.sha),
            "commit": {
                "author": {
                    "name": info.author_name,
                    "email": info.author_email,
                    "date": info.author_date,
                },
                "committer": {
                    "name": info.committer_name,
                    "email": info.committer_email,
                    "date": info.committer_date,
                },
                "message": info.message,
                "tree": {"sha": info.tree, "url": f"{api}/git/trees/{info.tree}"},
                "url": f"{api}/git/commits/{info.sha}",
                "comment_count": 0,
                "verification": {
                    "verified": False,
                    "reason": "unsigned",
                    "signature": None,
                    "payload": None,
                    "verified_at": None,
                },
            },
            "url": f"{api}/commits/{info.sha}",
            "html_url": f"{web}/commit/{info.sha}",
            "comments_url": f"{api}/commits/{info.sha}/comments",
            "author": None if author is None else self.simple_user(author),
            "committer": None if committer is None else self.simple_user(committer),
            "parents": [
                {"sha": sha, "url": f"{api}/commits/{sha}", "html_url": f"{web}/commit/{sha}"}
                for sha in info.parents
            ],
        }

    # reviews and review comments ---------------------------------------------------------

    def review(self, review: Review, author_association: str) -> dict[str, Any]:
        pr = review.pull
        html = f"{self.web}/{pr.full_name}/pull/{pr.number}#pullrequestreview-{review.id}"
        pr_url = f"{self.api}/repos/{pr.full_name}/pulls/{pr.number}"
        body: dict[str, Any] = {
            "id": review.id,
            "node_id": node_id("PRR", review.id),
            "user": self.simple_user(review.user),
            "body": review.body,
            "state": review.state,
            "html_url": html,
            "pull_request_url": pr_url,
            "author_association": author_association,
            "_links": {"html": {"href": html}, "pull_request": {"href": pr_url}},
        }
        if review.submitted_at is not None:
            body["submitted_at"] = iso(review.submitted_at)
        body["commit_id"] = review.commit_id
        return body

    def review_comment(
        self, comment: ReviewComment, reactions: list[Reaction], author_association: str
    ) -> dict[str, Any]:
        pr = comment.pull
        url = f"{self.api}/repos/{pr.full_name}/pulls/comments/{comment.id}"
        html = f"{self.web}/{pr.full_name}/pull/{pr.number}#discussion_r{comment.id}"
        pr_url = f"{self.api}/repos/{pr.full_name}/pulls/{pr.number}"
        body: dict[str, Any] = {
            "url": url,
            "pull_request_review_id": comment.review_id,
            "id": comment.id,
            "node_id": node_id("PRRC", comment.id),
            "diff_hunk": comment.diff_hunk,
            "path": comment.path,
            "position": comment.position,
            "original_position": comment.position,
            "commit_id": comment.commit_id,
            "original_commit_id": comment.original_commit_id,
        }
        if comment.in_reply_to_id is not None:
            body["in_reply_to_id"] = comment.in_reply_to_id
        body.update(
            {
                "user": self.simple_user(comment.user),
                "body": comment.body,
                "created_at": iso(comment.created_at),
                "updated_at": iso(comment.updated_at),
                "html_url": html,
                "pull_request_url": pr_url,
                "author_association": author_association,
                "_links": {
                    "self": {"href": url},
                    "html": {"href": html},
                    "pull_request": {"href": pr_url},
                },
                "reactions": self.reaction_rollup(url, reactions),
                "start_line": comment.start_line,
                "original_start_line": comment.start_line,
                "start_side": comment.start_side,
                "line": comment.line,
                "original_line": comment.line,
                "side": comment.side,
                "subject_type": "line",
            }
        )
        return body

    # contents ------------------------------------------------------------------------------

    def _content_base(self, repo: Repo, entry: TreeEntry, ref: str) -> dict[str, Any]:
        api = f"{self.api}/repos/{repo.full_name}"
        path = quote(entry.path)
        kind = entry.content_type
        url = f"{api}/contents/{path}?ref={quote(ref, safe='')}"
        if kind == "dir":
            git_url: str | None = f"{api}/git/trees/{entry.sha}"
            html: str | None = f"{self.web}/{repo.full_name}/tree/{ref}/{path}"
            download = None
        elif kind == "submodule":
            git_url = f"{api}/git/trees/{entry.sha}"
            html = None
            download = None
        else:
            git_url = f"{api}/git/blobs/{entry.sha}"
            html = f"{self.web}/{repo.full_name}/blob/{ref}/{path}"
            download = f"{self.web}/raw/{repo.full_name}/{ref}/{path}"
        return {
            "name": entry.name,
            "path": entry.path,
            "sha": entry.sha,
            "size": entry.size or 0,
            "url": url,
            "html_url": html,
            "git_url": git_url,
            "download_url": download,
            "type": kind,
            "_links": {"self": url, "git": git_url, "html": html},
        }

    def content_file(self, repo: Repo, entry: TreeEntry, ref: str, data: bytes) -> dict[str, Any]:
        """A file of ``GET …/contents/{path}``: base64 content up to 1 MB, like GitHub (larger
        files come with an empty ``content`` and ``encoding: none``)."""
        body = self._content_base(repo, entry, ref)
        links = body.pop("_links")
        if len(data) <= MAX_CONTENT_SIZE:
            body.update({"content": wrapped_base64(data), "encoding": "base64"})
        else:
            body.update({"content": "", "encoding": "none"})
        body["_links"] = links
        return body

    def content_symlink(
        self, repo: Repo, entry: TreeEntry, ref: str, target: str
    ) -> dict[str, Any]:
        body = self._content_base(repo, entry, ref)
        links = body.pop("_links")
        body["target"] = target
        body["_links"] = links
        return body

    def content_directory(
        self, repo: Repo, entries: list[TreeEntry], ref: str
    ) -> list[dict[str, Any]]:
        return [self._content_base(repo, entry, ref) for entry in entries]

    # errors ---------------------------------------------------------------------------

    @staticmethod
    def error(
        message: str,
        documentation_url: str,
        status: int,
        errors: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": message,
            "documentation_url": documentation_url,
            "status": str(status),
        }
        if errors is not None:
            body["errors"] = errors
        return body
