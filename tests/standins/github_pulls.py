"""Pull requests, reviews and review comments of the GitHub stand-in.

``PullRequestsMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``); it holds the
pull-request builders, accessors and REST handlers, and keeps the refs GitHub keeps:

* every pull request has ``refs/pull/N/head`` in its *base* repository, following the head
  branch (for a fork, the head commits are fetched into the base repository), so the head of a
  fork PR can be fetched through the base repository;
* ``refs/pull/*`` is hidden from pushes (``receive.hideRefs``), as on GitHub.

A fork (``add_pull(…, fork_full_name=…)``) is a separate bare repository owned by the PR
author, outside every installation: installation tokens neither see it over REST nor fetch
or push it over git.

Diffs are those of GitHub (``git diff base...head``: from the merge base), and an inline
comment must sit on a line of the diff: on the RIGHT side an added or context line of the new
file, on the LEFT side a removed or context line of the old file.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request

from . import github_git as gitops
from .github_objects import (
    ApiError,
    Comment,
    Ids,
    Issue,
    Objects,
    PullRequest,
    PullView,
    Reaction,
    Repo,
    Review,
    ReviewComment,
    Token,
    User,
    now,
)

Handled = tuple[int, Any, dict[str, str]]

# (method, OpenAPI path template) -> handler name, documentation path
PULL_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/repos/{owner}/{repo}/pulls"): ("create_pull", "pulls/pulls#create-a-pull-request"),
    ("GET", "/repos/{owner}/{repo}/pulls"): ("list_pulls", "pulls/pulls#list-pull-requests"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"): (
        "get_pull",
        "pulls/pulls#get-a-pull-request",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/files"): (
        "list_pull_files",
        "pulls/pulls#list-pull-requests-files",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/commits"): (
        "list_pull_commits",
        "pulls/pulls#list-commits-on-a-pull-request",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"): (
        "list_reviews",
        "pulls/reviews#list-reviews-for-a-pull-request",
    ),
    ("POST", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"): (
        "create_review",
        "pulls/reviews#create-a-review-for-a-pull-request",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews/{review_id}"): (
        "get_review",
        "pulls/reviews#get-a-review-for-a-pull-request",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews/{review_id}/comments"): (
        "list_comments_for_review",
        "pulls/reviews#list-comments-for-a-pull-request-review",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/comments"): (
        "list_review_comments",
        "pulls/comments#list-review-comments-on-a-pull-request",
    ),
    ("POST", "/repos/{owner}/{repo}/pulls/{pull_number}/comments"): (
        "create_review_comment",
        "pulls/comments#create-a-review-comment-for-a-pull-request",
    ),
    ("POST", "/repos/{owner}/{repo}/pulls/{pull_number}/comments/{comment_id}/replies"): (
        "create_reply",
        "pulls/comments#create-a-reply-for-a-review-comment",
    ),
    ("GET", "/repos/{owner}/{repo}/pulls/comments/{comment_id}"): (
        "get_review_comment",
        "pulls/comments#get-a-review-comment-for-a-pull-request",
    ),
    ("PATCH", "/repos/{owner}/{repo}/pulls/comments/{comment_id}"): (
        "update_review_comment",
        "pulls/comments#update-a-review-comment-for-a-pull-request",
    ),
    ("POST", "/repos/{owner}/{repo}/pulls/comments/{comment_id}/reactions"): (
        "create_review_comment_reaction",
        "reactions/reactions#create-reaction-for-a-pull-request-review-comment",
    ),
}

REVIEW_EVENTS = {
    "APPROVE": "APPROVED",
    "REQUEST_CHANGES": "CHANGES_REQUESTED",
    "COMMENT": "COMMENTED",
}
MAX_DIFF_LINES = 20000  # GitHub answers 406 for a larger diff
DIFF_MEDIA = re.compile(r"application/vnd\.github(?:\.v3)?\.diff")


@dataclass
class RawBody:
    """A non-JSON answer (a diff, raw file content) and its media type."""

    data: str | bytes
    media_type: str  # "diff" | "raw"

    @property
    def content_type(self) -> str:
        return f"application/vnd.github.{self.media_type}; charset=utf-8"


@dataclass
class Anchor:
    """Where an inline comment sits in a file's patch."""

    path: str
    line: int
    side: str
    start_line: int | None
    start_side: str | None
    position: int
    diff_hunk: str


class AnchorError(Exception):
    """A comment's place could not be found in the diff. ``review`` is the sentence the
    reviews endpoint answers with; ``field``/``message`` the error object of the comments
    endpoint."""

    def __init__(self, review: str, field: str, message: str):
        super().__init__(review)
        self.review = review
        self.field = field
        self.message = message


def _sentence(parts: list[str]) -> str:
    """Join like Rails' ``to_sentence``, as GitHub does in review errors."""
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + ", and " + parts[-1]


def unprocessable(*messages: str) -> ApiError:
    """A 422 of the reviews endpoint: ``errors`` is a list of strings there."""
    return ApiError(422, "Unprocessable Entity", errors=[_sentence(list(messages))])


def validation_failed(resource: str, field: str, message: str, code: str = "custom") -> ApiError:
    error = {"resource": resource, "code": code, "field": field, "message": message}
    return ApiError(422, "Validation Failed", errors=[error])


@dataclass(frozen=True)
class NewPull:
    """A pull request for a test to open, by ``user_login`` from ``head_branch`` into ``base``.

    ``files`` (path -> text; ``None`` deletes) are committed, by the author, on
    ``head_branch`` made from ``base`` (or on top of it when it exists already). With
    ``fork_full_name`` the head branch lives in that fork of the repository (created on
    first use, owned by its owner, outside every installation). ``labels`` are shared with
    the issue twin. The number is the repository's next one unless given."""

    head_branch: str
    base: str = "main"
    title: str = "Proposed changes"
    body: str | None = None
    user_login: str = "octocat"
    files: dict[str, str | bytes | gitops.Symlink | None] | None = None
    fork_full_name: str | None = None
    labels: Iterable[str] = ()
    draft: bool = False
    number: int | None = None
    user_id: int | None = None
    message: str | None = None


class PullRequestsMixin:
    """Pull requests for ``GitHubStandIn``; the attributes below are the stand-in's."""

    _lock: threading.RLock
    _ids: Ids
    _users: dict[str, User]
    _repos: dict[str, Repo]
    _issues: dict[tuple[str, int], Issue]
    _comments: dict[int, Comment]
    _reactions: list[Reaction]
    _pulls: dict[tuple[str, int], PullRequest]
    _reviews: dict[int, Review]
    _review_comments: dict[int, ReviewComment]
    bot_user: User
    api_url: str
    git_root: Path
    _git_env: dict[str, str]
    objects: Objects

    # the stand-in's helpers (github.py)
    add_user: Any
    _repo: Any
    _issue: Any
    _next_number: Any
    _author_association: Any
    _repo_permissions: Any
    _visible: Any
    _need_token: Any
    _scoped_repo: Any
    _need_permission: Any
    _page: Any
    _comment_body: Any
    _react: Any
    noreply_email: Any

    # ------------------------------------------------------------------ builders

    def add_pull(self, full_name: str, new: NewPull) -> PullRequest:
        """Open the pull request ``new`` describes on ``full_name``."""
        head_branch, base, title, body = new.head_branch, new.base, new.title, new.body
        files, fork_full_name, number, message = (
            new.files,
            new.fork_full_name,
            new.number,
            new.message,
        )
        with self._lock:
            repo = self._repo(full_name)
            user = self.add_user(new.user_login, new.user_id)
            env = self._git_env
            base_sha = gitops.rev_parse(repo.path, f"refs/heads/{base}", env)
            if base_sha is None:
                raise ValueError(f"{full_name} has no branch {base!r}")
            head_repo = repo if fork_full_name is None else self._fork(repo, fork_full_name)
            head_sha = gitops.rev_parse(head_repo.path, f"refs/heads/{head_branch}", env)
            if files:
                if head_sha is None:
                    if head_repo is not repo:  # the fork may be older than the base branch
                        gitops.fetch_ref(head_repo.path, repo.path, base_sha, env)
                    head_sha = base_sha
                head_sha = gitops.commit_files(
                    head_repo.path, head_sha, files, message or title, self._author(user), env
                )
                gitops.update_ref(head_repo.path, f"refs/heads/{head_branch}", head_sha, env)
                head_repo.pushed_at = now()
            elif head_sha is None:
                raise ValueError(f"{head_repo.full_name} has no branch {head_branch!r}; pass files")
            if number is None:
                number = self._next_number(repo)
            elif (repo.full_name.lower(), number) in self._issues:
                raise ValueError(f"{full_name}#{number} already exists")
            pr = PullRequest(
                id=self._ids.next("pull"),
                repo=repo,
                number=number,
                title=title,
                body=body,
                user=user,
                head_ref=head_branch,
                head_sha=head_sha,
                base_ref=base,
                base_sha=base_sha,
                draft=new.draft,
                head_repo=head_repo,
                labels=list(new.labels),
            )
            self._register_pull(pr)
            return pr

    def add_commit(
        self,
        full_name: str,
        branch: str,
        files: dict[str, str | bytes | gitops.Symlink | None],
        message: str = "Update files",
        user_login: str | None = None,
    ) -> str:
        """Commit ``files`` on an existing ``branch`` of any repository (forks included), as
        if its owner pushed; pull requests from that branch follow. Returns the new sha."""
        with self._lock:
            repo = self._repo(full_name)
            env = self._git_env
            parent = gitops.rev_parse(repo.path, f"refs/heads/{branch}", env)
            if parent is None:
                raise ValueError(f"{full_name} has no branch {branch!r}")
            user = self.add_user(user_login) if user_login else repo.owner
            sha = gitops.commit_files(repo.path, parent, files, message, self._author(user), env)
            gitops.update_ref(repo.path, f"refs/heads/{branch}", sha, env)
            repo.pushed_at = now()
            self._branches_moved(repo, {branch})
            return sha

    def add_review(
        self,
        full_name: str,
        pull_number: int,
        body: str,
        user_login: str,
        comments: Iterable[dict[str, Any]] = (),
        *,
        state: str = "COMMENTED",
        commit_id: str | None = None,
    ) -> Review:
        """A submitted review by ``user_login`` with inline ``comments`` (dicts with ``path``,
        ``line``, ``body`` and optionally ``side``, ``start_line``, ``start_side``)."""
        if state not in ("COMMENTED", "APPROVED", "CHANGES_REQUESTED", "PENDING", "DISMISSED"):
            raise ValueError(f"unknown review state {state!r}")
        with self._lock:
            pr = self.pull(full_name, pull_number)
            user = self.add_user(user_login)
            commit = commit_id or self._head_sha(pr)
            anchors = []
            for spec in comments:
                try:
                    anchors.append((self._anchor(pr, commit, spec), spec["body"]))
                except AnchorError as exc:
                    raise ValueError(f"{spec}: {exc.review}") from None
            review = self._new_review(pr, user, body, state, commit)
            for anchor, text in anchors:
                self._new_review_comment(pr, review, user, text, anchor, commit)
            return review

    def add_review_comment(
        self,
        full_name: str,
        pull_number: int,
        comment: dict[str, Any],
        user_login: str,
        *,
        review_id: int | None = None,
        commit_id: str | None = None,
    ) -> ReviewComment:
        """An inline comment by ``user_login``, in its own COMMENTED review unless ``review_id``;
        ``comment`` is as ``add_review`` takes them (``path``, ``line``, ``body`` and optionally
        ``side``, ``start_line``, ``start_side``)."""
        with self._lock:
            pr = self.pull(full_name, pull_number)
            user = self.add_user(user_login)
            commit = commit_id or self._head_sha(pr)
            spec = {"side": "RIGHT", **comment}
            if spec.get("start_line") is not None:
                spec.setdefault("start_side", spec["side"])
            try:
                anchor = self._anchor(pr, commit, spec)
            except AnchorError as exc:
                raise ValueError(f"{spec['path']}:{spec['line']}: {exc.review}") from None
            if review_id is None:
                review = self._new_review(pr, user, "", "COMMENTED", commit)
            else:
                review = self._reviews[review_id]
            return self._new_review_comment(pr, review, user, spec["body"], anchor, commit)

    def add_review_reply(
        self, full_name: str, pull_number: int, in_reply_to: int, body: str, user_login: str
    ) -> ReviewComment:
        """A reply by ``user_login`` in the thread of review comment ``in_reply_to``."""
        with self._lock:
            pr = self.pull(full_name, pull_number)
            user = self.add_user(user_login)
            parent = self._review_comments.get(in_reply_to)
            if parent is None or parent.pull is not pr:
                raise ValueError(f"no review comment {in_reply_to} on {full_name}#{pull_number}")
            return self._reply(parent, user, body)

    # ------------------------------------------------------------------ accessors

    @property
    def pulls(self) -> list[PullRequest]:
        with self._lock:
            return sorted(self._pulls.values(), key=lambda p: p.id)

    def pull(self, full_name: str, number: int) -> PullRequest:
        """The pull request, its head brought up to date with its branch."""
        with self._lock:
            repo = self._repo(full_name)
            pr = self._pulls.get((repo.full_name.lower(), number))
            if pr is None:
                raise KeyError(f"no pull request {full_name}#{number}")
            self._head_sha(pr)
            return pr

    @property
    def reviews(self) -> list[Review]:
        with self._lock:
            return sorted(self._reviews.values(), key=lambda r: r.id)

    @property
    def review_comments(self) -> list[ReviewComment]:
        with self._lock:
            return sorted(self._review_comments.values(), key=lambda c: c.id)

    # ------------------------------------------------------------------ internals

    def _author(self, user: User) -> tuple[str, str]:
        return (user.name or user.login, user.email or self.noreply_email(user))

    def _fork(self, upstream: Repo, fork_full_name: str) -> Repo:
        existing = self._repos.get(fork_full_name.lower())
        if existing is not None:
            if existing.parent is not upstream:
                raise ValueError(
                    f"{fork_full_name} exists and is not a fork of {upstream.full_name}"
                )
            return existing
        owner_login, _, name = fork_full_name.partition("/")
        if not owner_login or not name or "/" in name:
            raise ValueError(f"bad repository full name {fork_full_name!r}")
        owner = self.add_user(owner_login)
        path = self.git_root / owner.login / f"{name}.git"
        gitops.fork_bare_repo(upstream.path, path, self._git_env)
        fork = Repo(
            id=self._ids.next("repo"),
            owner=owner,
            name=name,
            installation_id=None,
            default_branch=upstream.default_branch,
            private=upstream.private,
            path=path,
            description=upstream.description,
            parent=upstream,
        )
        self._repos[fork_full_name.lower()] = fork
        return fork

    def _register_pull(self, pr: PullRequest) -> None:
        key = (pr.repo.full_name.lower(), pr.number)
        self._pulls[key] = pr
        self._issues[key] = Issue(
            id=self._ids.next("issue"),
            repo=pr.repo,
            number=pr.number,
            title=pr.title,
            body=pr.body,
            user=pr.user,
            labels=pr.labels,  # the same list: labels of a PR are its issue's labels
            created_at=pr.created_at,
            updated_at=pr.updated_at,
            is_pull=True,
        )
        self._sync_pull_ref(pr)

    def _live_head(self, pr: PullRequest) -> str:
        ref = f"refs/heads/{pr.head_ref}"
        return gitops.rev_parse(pr.head_repository.path, ref, self._git_env) or pr.head_sha

    def _head_sha(self, pr: PullRequest) -> str:
        """The head commit (live), with ``refs/pull/N/head`` kept in step."""
        head = self._live_head(pr)
        if (
            head != pr.head_sha
            or gitops.rev_parse(pr.repo.path, pr.pull_ref, self._git_env) is None
        ):
            self._sync_pull_ref(pr)
        return pr.head_sha

    def _sync_pull_ref(self, pr: PullRequest) -> None:
        env = self._git_env
        head = self._live_head(pr)
        if gitops.rev_parse(pr.repo.path, pr.pull_ref, env) != head:
            if pr.is_fork:
                refspec = f"+refs/heads/{pr.head_ref}:{pr.pull_ref}"
                gitops.fetch_ref(pr.repo.path, pr.head_repository.path, refspec, env)
            else:
                gitops.update_ref(pr.repo.path, pr.pull_ref, head, env)
        if head != pr.head_sha:
            pr.head_sha = head
            pr.updated_at = now()

    def _branches_moved(self, repo: Repo, branches: set[str]) -> None:
        """After a push: pull requests whose head branch moved follow it."""
        for pr in self._pulls.values():
            if pr.head_repository is repo and pr.head_ref in branches:
                self._sync_pull_ref(pr)

    def _base_sha(self, pr: PullRequest) -> str:
        ref = f"refs/heads/{pr.base_ref}"
        return gitops.rev_parse(pr.repo.path, ref, self._git_env) or pr.base_sha

    def _files(self, pr: PullRequest, commit: str | None = None) -> list[gitops.FileChange]:
        head = commit or self._head_sha(pr)
        return gitops.diff_files(pr.repo.path, self._base_sha(pr), head, self._git_env)

    def _pr_commits(self, pr: PullRequest) -> list[gitops.CommitInfo]:
        return gitops.log_commits(
            pr.repo.path, self._base_sha(pr), self._head_sha(pr), self._git_env
        )

    def _user_by_email(self, email: str) -> User | None:
        for user in self._users.values():
            if email.lower() in {(user.email or "").lower(), self.noreply_email(user).lower()}:
                return user
        return None

    def _anchor(self, pr: PullRequest, commit: str, spec: dict[str, Any]) -> Anchor:
        """Place a comment (``path`` + ``line``/``side`` [+ ``start_line``/``start_side``], or
        the legacy ``position``) in the diff of ``commit``; AnchorError when it is not there."""
        path = spec.get("path")
        change = next((f for f in self._files(pr, commit) if f.filename == path), None)
        if change is None or change.patch is None:
            raise AnchorError(
                "Path could not be resolved",
                "pull_request_review_thread.path",
                "pull_request_review_thread.path is invalid",
            )
        lines = gitops.patch_lines(change.patch)
        if spec.get("line") is None and spec.get("position") is not None:
            position = spec["position"]
            if not isinstance(position, int) or not 0 < position < len(lines):
                raise AnchorError(
                    "Position could not be resolved",
                    "pull_request_review_thread.position",
                    "pull_request_review_thread.position is invalid",
                )
            at = lines[position]
            if at.kind not in "+- ":
                raise AnchorError(
                    "Position could not be resolved",
                    "pull_request_review_thread.position",
                    "pull_request_review_thread.position is invalid",
                )
            side = "LEFT" if at.kind == "-" else "RIGHT"
            line = at.old if side == "LEFT" else at.new
            assert line is not None
            spec = {"line": line, "side": side}

        side = spec.get("side") or "RIGHT"
        end = self._find_line(lines, spec.get("line"), side)
        if end is None:
            raise AnchorError(
                "Line could not be resolved",
                "pull_request_review_thread.line",
                "pull_request_review_thread.line must be part of the diff",
            )
        start_line = spec.get("start_line")
        start_side = None
        if start_line is not None:
            start_side = spec.get("start_side") or side
            start = self._find_line(lines, start_line, start_side)
            if start is None:
                raise AnchorError(
                    "Start line could not be resolved",
                    "pull_request_review_thread.start_line",
                    "pull_request_review_thread.start_line must be part of the diff",
                )
            if start.position >= end.position:
                raise AnchorError(
                    "Start line must precede the end line",
                    "pull_request_review_thread.start_line",
                    "pull_request_review_thread.start_line must precede the end line.",
                )
            if start.hunk != end.hunk:
                raise AnchorError(
                    "Start line must be part of the same hunk as the line",
                    "pull_request_review_thread.start_line",
                    "pull_request_review_thread.start_line must be part of the same hunk as "
                    "the line.",
                )
        hunk = change.patch.split("\n")[end.hunk_start : end.position + 1]
        return Anchor(
            path=change.filename,
            line=spec["line"],
            side=side,
            start_line=start_line,
            start_side=start_side,
            position=end.position,
            diff_hunk="\n".join(hunk),
        )

    @staticmethod
    def _find_line(lines: list[gitops.PatchLine], line: Any, side: str) -> gitops.PatchLine | None:
        if not isinstance(line, int) or side not in ("LEFT", "RIGHT"):
            return None
        for candidate in lines:
            if side == "RIGHT" and candidate.kind in "+ " and candidate.new == line:
                return candidate
            if side == "LEFT" and candidate.kind in "- " and candidate.old == line:
                return candidate
        return None

    def _new_review(
        self, pr: PullRequest, user: User, body: str, state: str, commit: str
    ) -> Review:
        review = Review(
            id=self._ids.next("review"),
            pull=pr,
            user=user,
            body=body,
            state=state,
            commit_id=commit,
            submitted_at=None if state == "PENDING" else now(),
        )
        self._reviews[review.id] = review
        return review

    def _new_review_comment(
        self,
        pr: PullRequest,
        review: Review,
        user: User,
        body: str,
        anchor: Anchor,
        commit: str,
        in_reply_to: int | None = None,
    ) -> ReviewComment:
        comment = ReviewComment(
            id=self._ids.next("review_comment"),
            pull=pr,
            review_id=review.id,
            user=user,
            body=body,
            path=anchor.path,
            commit_id=commit,
            diff_hunk=anchor.diff_hunk,
            position=anchor.position,
            line=anchor.line,
            side=anchor.side,
            start_line=anchor.start_line,
            start_side=anchor.start_side,
            in_reply_to_id=in_reply_to,
        )
        self._review_comments[comment.id] = comment
        pr.updated_at = now()
        return comment

    def _reply(self, parent: ReviewComment, user: User, body: str) -> ReviewComment:
        """A reply joins the thread of ``parent`` (its first comment, for a reply to a reply)
        in a new COMMENTED review with an empty body, as GitHub records it."""
        root = parent
        while root.in_reply_to_id is not None:
            root = self._review_comments[root.in_reply_to_id]
        review = self._new_review(root.pull, user, "", "COMMENTED", root.commit_id)
        anchor = Anchor(
            path=root.path,
            line=root.line,
            side=root.side,
            start_line=root.start_line,
            start_side=root.start_side,
            position=root.position,
            diff_hunk=root.diff_hunk,
        )
        return self._new_review_comment(
            root.pull, review, user, body, anchor, root.commit_id, in_reply_to=root.id
        )

    def _visible_review_comments(self, pr: PullRequest) -> list[ReviewComment]:
        pending = {r.id for r in self._reviews.values() if r.state == "PENDING"}
        return [
            c
            for c in sorted(self._review_comments.values(), key=lambda c: c.id)
            if c.pull is pr and c.review_id not in pending
        ]

    # ------------------------------------------------------------------ JSON

    def _pull_json(self, pr: PullRequest, token: Token, full: bool) -> dict[str, Any]:
        head_sha = self._head_sha(pr)
        base_sha = self._base_sha(pr)
        association = self._author_association(pr.repo, pr.user)
        perms = self._repo_permissions(token)
        head_perms = perms if self._visible(token, pr.head_repository) else None
        view = PullView(head_sha, base_sha, association, perms, head_perms)
        if not full:
            return self.objects.pull_request_simple(pr, view)
        stats = gitops.pr_stats(pr.repo.path, base_sha, head_sha, self._git_env)
        comments = sum(
            1 for c in self._comments.values() if c.repo is pr.repo and c.issue_number == pr.number
        )
        return self.objects.pull_request(
            pr,
            view,
            stats,
            comments,
            review_comment_count=len(self._visible_review_comments(pr)),
        )

    def _review_json(self, review: Review) -> dict[str, Any]:
        association = self._author_association(review.pull.repo, review.user)
        return self.objects.review(review, association)

    def _review_comment_json(self, comment: ReviewComment) -> dict[str, Any]:
        reactions = [
            r
            for r in self._reactions
            if r.subject == "review_comment" and r.comment_id == comment.id
        ]
        association = self._author_association(comment.pull.repo, comment.user)
        return self.objects.review_comment(comment, reactions, association)

    # ------------------------------------------------------------------ REST: lookups

    def _scoped_pull(
        self, auth: str | None, credential: Any, owner: str, repo: str, number: int, level: str
    ) -> tuple[Token, PullRequest]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("pull_requests", level))
        pr = self._pulls.get((found.full_name.lower(), number))
        if pr is None:
            raise ApiError(404, "Not Found")
        return token, pr

    def _scoped_review_comment(
        self, auth: str | None, credential: Any, owner: str, repo: str, comment_id: int, level: str
    ) -> tuple[Token, ReviewComment]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("pull_requests", level))
        comment = self._review_comments.get(comment_id)
        if comment is None or comment.pull.repo is not found:
            raise ApiError(404, "Not Found")
        return token, comment

    # ------------------------------------------------------------------ REST: pull requests

    def _h_create_pull(
        self, *, auth: str | None, credential: Any, payload: Any, owner: str, repo: str, **_: Any
    ) -> Handled:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("pull_requests", "write"))
        if not isinstance(payload, dict):
            raise ApiError(422, 'Invalid request.\n\n"head", "base" weren\'t supplied.')
        missing = [k for k in ("head", "base") if not isinstance(payload.get(k), str)]
        if missing:
            names = ", ".join(f'"{k}"' for k in missing)
            verb = "wasn't" if len(missing) == 1 else "weren't"
            raise ApiError(422, f"Invalid request.\n\n{names} {verb} supplied.")
        title = payload.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ApiError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "missing_field", "field": "title"}],
            )
        head, base = payload["head"], payload["base"]
        head_owner, sep, head_ref = head.partition(":")
        if not sep:
            head_owner, head_ref = found.owner.login, head
        env = self._git_env

        def invalid(field_name: str) -> ApiError:
            return ApiError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "field": field_name, "code": "invalid"}],
            )

        base_sha = gitops.rev_parse(found.path, f"refs/heads/{base}", env)
        if base_sha is None:
            raise invalid("base")
        if head_owner.lower() == found.owner.login.lower():
            head_repo = found
        else:  # a branch of the head owner's fork of this repository
            forks = [
                r
                for r in self._repos.values()
                if r.parent is found and r.owner.login.lower() == head_owner.lower()
            ]
            if not forks:
                raise invalid("head")
            head_repo = forks[0]
        head_sha = gitops.rev_parse(head_repo.path, f"refs/heads/{head_ref}", env)
        if head_sha is None:
            raise invalid("head")
        label = f"{head_repo.owner.login}:{head_ref}"
        if head_repo is not found:  # count commits with the fork's objects at hand
            gitops.fetch_ref(found.path, head_repo.path, head_sha, env)
        no_commits = gitops.pr_stats(found.path, base_sha, head_sha, env).commits == 0
        if (head_repo is found and head_ref == base) or no_commits:
            raise ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base} and {label if sep else head_ref}",
                    }
                ],
            )
        for pr in self._pulls.values():
            if (
                pr.repo is found
                and pr.state == "open"
                and pr.head_repository is head_repo
                and pr.head_ref == head_ref
                and pr.base_ref == base
            ):
                raise ApiError(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {label}.",
                        }
                    ],
                )
        body = payload.get("body")
        pr = PullRequest(
            id=self._ids.next("pull"),
            repo=found,
            number=self._next_number(found),
            title=title,
            body=body if isinstance(body, str) else None,
            user=self.bot_user,
            head_ref=head_ref,
            head_sha=head_sha,
            base_ref=base,
            base_sha=base_sha,
            draft=bool(payload.get("draft", False)),
            maintainer_can_modify=False,
            head_repo=head_repo,
        )
        self._register_pull(pr)
        out = self._pull_json(pr, token, full=True)
        return 201, out, {"Location": out["url"]}

    def _h_list_pulls(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        **_: Any,
    ) -> Handled:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("pull_requests", "read"))
        state = request.args.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise ApiError(
                422,
                "Validation Failed",
                errors=[{"resource": "Search", "field": "state", "code": "invalid"}],
            )
        pulls = [p for p in self._pulls.values() if p.repo is found]
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        head = request.args.get("head")
        if head:
            head_owner, sep, head_ref = head.partition(":")
            if not sep:
                head_owner, head_ref = found.owner.login, head
            pulls = [
                p
                for p in pulls
                if p.head_ref == head_ref
                and head_owner.lower() == p.head_repository.owner.login.lower()
            ]
        base = request.args.get("base")
        if base:
            pulls = [p for p in pulls if p.base_ref == base]
        reverse = request.args.get("direction", "desc") != "asc"
        pulls.sort(key=lambda p: p.id, reverse=reverse)
        url = f"{self.api_url}/repos/{found.full_name}/pulls"
        page, headers = self._page(request, pulls, url)
        return 200, [self._pull_json(p, token, full=False) for p in page], headers

    def _h_get_pull(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        token, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        if not DIFF_MEDIA.search(request.headers.get("Accept", "")):
            return 200, self._pull_json(pr, token, full=True), {}
        text = gitops.unified_diff(
            pr.repo.path, self._base_sha(pr), self._head_sha(pr), self._git_env
        )
        if text.count("\n") > MAX_DIFF_LINES:
            raise ApiError(
                406,
                f"Sorry, the diff exceeded the maximum number of lines ({MAX_DIFF_LINES})",
                errors=[{"resource": "PullRequest", "field": "diff", "code": "too_large"}],
            )
        return 200, RawBody(text, "diff"), {}

    def _h_list_pull_files(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        head = self._head_sha(pr)
        files = self._files(pr)[:3000]  # GitHub lists at most 3000 files
        url = f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}/files"
        page, headers = self._page(request, files, url)
        return 200, [self.objects.diff_entry(pr.repo, head, f) for f in page], headers

    def _h_list_pull_commits(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        commits = self._pr_commits(pr)[:250]  # GitHub lists at most 250 commits
        url = f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}/commits"
        page, headers = self._page(request, commits, url)
        body = [
            self.objects.commit(
                pr.repo,
                info,
                self._user_by_email(info.author_email),
                self._user_by_email(info.committer_email),
            )
            for info in page
        ]
        return 200, body, headers

    # ------------------------------------------------------------------ REST: reviews

    def _h_list_reviews(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        reviews = [
            r
            for r in sorted(self._reviews.values(), key=lambda r: r.id)
            if r.pull is pr and (r.state != "PENDING" or r.user is self.bot_user)
        ]
        url = f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}/reviews"
        page, headers = self._page(request, reviews, url)
        return 200, [self._review_json(r) for r in page], headers

    def _scoped_review(self, pr: PullRequest, review_id: int) -> Review:
        review = self._reviews.get(review_id)
        if review is None or review.pull is not pr:
            raise ApiError(404, "Not Found")
        if review.state == "PENDING" and review.user is not self.bot_user:
            raise ApiError(404, "Not Found")
        return review

    def _h_get_review(
        self,
        *,
        auth: str | None,
        credential: Any,
        owner: str,
        repo: str,
        pull_number: int,
        review_id: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        return 200, self._review_json(self._scoped_review(pr, review_id)), {}

    def _h_list_comments_for_review(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        review_id: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        review = self._scoped_review(pr, review_id)
        comments = [
            c
            for c in sorted(self._review_comments.values(), key=lambda c: c.id)
            if c.review_id == review.id
        ]
        url = f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}/reviews/{review.id}/comments"
        page, headers = self._page(request, comments, url)
        return 200, [self._review_comment_json(c) for c in page], headers

    def _h_create_review(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "write")
        payload = payload if isinstance(payload, dict) else {}
        event = payload.get("event")
        if event is not None and event not in REVIEW_EVENTS:
            raise unprocessable(
                "Variable $event of type PullRequestReviewEvent was provided invalid value"
            )
        body = payload.get("body")
        if body is not None and not isinstance(body, str):
            raise ApiError(
                422,
                f"Invalid request.\n\nFor 'properties/body', {body!r} is not a string.",
            )
        body = body or ""
        comments = payload.get("comments") or []
        if not isinstance(comments, list) or not all(isinstance(c, dict) for c in comments):
            raise ApiError(422, "Invalid request.\n\nFor 'properties/comments', not an array.")
        for spec in comments:
            missing = [k for k in ("path", "body") if not isinstance(spec.get(k), str)]
            if missing:
                names = ", ".join(f'"{k}"' for k in missing)
                verb = "wasn't" if len(missing) == 1 else "weren't"
                raise ApiError(422, f"Invalid request.\n\n{names} {verb} supplied.")

        if pr.user is self.bot_user and event == "APPROVE":
            raise unprocessable("Review Can not approve your own pull request")
        if pr.user is self.bot_user and event == "REQUEST_CHANGES":
            raise unprocessable("Review Can not request changes on your own pull request")
        if event in ("REQUEST_CHANGES", "COMMENT") and not body.strip() and not comments:
            raise unprocessable("Body is required for REQUEST_CHANGES and COMMENT events")
        if event is None and any(
            r.pull is pr and r.user is self.bot_user and r.state == "PENDING"
            for r in self._reviews.values()
        ):
            raise unprocessable("User can only have one pending review per pull request")

        head = self._head_sha(pr)
        commit = payload.get("commit_id") or head
        if commit != head and commit not in {c.sha for c in self._pr_commits(pr)}:
            raise unprocessable("The commitOID is not part of the pull request")

        anchors: list[tuple[Anchor, str]] = []
        problems: list[str] = []
        for spec in comments:
            try:
                anchors.append((self._anchor(pr, commit, spec), spec["body"]))
            except AnchorError as exc:
                problems.append(exc.review)
        if problems:  # the whole review is refused, nothing is recorded
            raise unprocessable(*problems)

        state = "PENDING" if event is None else REVIEW_EVENTS[event]
        review = self._new_review(pr, self.bot_user, body, state, commit)
        for anchor, text in anchors:
            self._new_review_comment(pr, review, self.bot_user, text, anchor, commit)
        return 200, self._review_json(review), {}

    # ------------------------------------------------------------------ REST: review comments

    def _h_list_review_comments(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "read")
        comments = self._visible_review_comments(pr)
        if request.args.get("direction") == "desc":
            comments.reverse()
        since = request.args.get("since")
        if since:
            comments = [c for c in comments if c.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") >= since]
        url = f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}/comments"
        page, headers = self._page(request, comments, url)
        return 200, [self._review_comment_json(c) for c in page], headers

    def _h_create_review_comment(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        pull_number: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "write")
        body = self._comment_body(payload, resource="PullRequestReviewComment")
        if payload.get("in_reply_to") is not None:
            parent = self._review_comments.get(payload["in_reply_to"])
            if parent is None or parent.pull is not pr:
                raise ApiError(404, "Parent comment not found")
            reply = self._reply(parent, self.bot_user, body)
            out = self._review_comment_json(reply)
            return 201, out, {"Location": out["url"]}
        missing = [k for k in ("commit_id", "path") if not isinstance(payload.get(k), str)]
        if missing:
            names = ", ".join(f'"{k}"' for k in missing)
            verb = "wasn't" if len(missing) == 1 else "weren't"
            raise ApiError(422, f"Invalid request.\n\n{names} {verb} supplied.")
        commit = payload["commit_id"]
        if commit != self._head_sha(pr) and commit not in {c.sha for c in self._pr_commits(pr)}:
            raise validation_failed(
                "PullRequestReviewComment", "commit_id", "commit_id is not part of the pull request"
            )
        try:
            anchor = self._anchor(pr, commit, payload)
        except AnchorError as exc:
            raise validation_failed("PullRequestReviewComment", exc.field, exc.message) from None
        review = self._new_review(pr, self.bot_user, "", "COMMENTED", commit)
        comment = self._new_review_comment(pr, review, self.bot_user, body, anchor, commit)
        out = self._review_comment_json(comment)
        return 201, out, {"Location": out["url"]}

    def _h_create_reply(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        pull_number: int,
        comment_id: int,
        **_: Any,
    ) -> Handled:
        _, pr = self._scoped_pull(auth, credential, owner, repo, pull_number, "write")
        parent = self._review_comments.get(comment_id)
        if parent is None or parent.pull is not pr:
            raise ApiError(404, "Parent comment not found")
        body = self._comment_body(payload, resource="PullRequestReviewComment")
        reply = self._reply(parent, self.bot_user, body)
        out = self._review_comment_json(reply)
        return 201, out, {"Location": out["url"]}

    def _h_get_review_comment(
        self, *, auth: str | None, credential: Any, owner: str, repo: str, comment_id: int, **_: Any
    ) -> Handled:
        _, comment = self._scoped_review_comment(auth, credential, owner, repo, comment_id, "read")
        return 200, self._review_comment_json(comment), {}

    def _h_update_review_comment(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        comment_id: int,
        **_: Any,
    ) -> Handled:
        _, comment = self._scoped_review_comment(auth, credential, owner, repo, comment_id, "write")
        comment.body = self._comment_body(payload, resource="PullRequestReviewComment")
        comment.updated_at = now()
        return 200, self._review_comment_json(comment), {}

    def _h_create_review_comment_reaction(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        comment_id: int,
        **_: Any,
    ) -> Handled:
        _, comment = self._scoped_review_comment(auth, credential, owner, repo, comment_id, "write")
        return self._react("review_comment", comment.id, payload)
