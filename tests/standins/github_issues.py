"""Issues, issue comments and reactions of the GitHub stand-in.

``IssuesMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). Pull requests are
issues too (``github_pulls.py`` registers an issue twin for each), so their conversation
comments, labels and numbers live here: ``GET …/issues/{n}/comments`` lists a pull request's
conversation, and issue and pull request numbers come from one sequence per repository.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

from werkzeug.wrappers import Request

from .github_objects import (
    MAX_COMMENT_BODY,
    REACTION_CONTENTS,
    ApiError,
    Comment,
    Ids,
    Issue,
    Objects,
    Reaction,
    Repo,
    Token,
    User,
    now,
)

Handled = tuple[int, Any, dict[str, str]]

# (method, OpenAPI path template) -> handler name, documentation path
ISSUE_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}"): (
        "get_issue",
        "issues/issues#get-an-issue",
    ),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): (
        "list_comments",
        "issues/comments#list-issue-comments",
    ),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): (
        "create_comment",
        "issues/comments#create-an-issue-comment",
    ),
    ("GET", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): (
        "get_comment",
        "issues/comments#get-an-issue-comment",
    ),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): (
        "update_comment",
        "issues/comments#update-an-issue-comment",
    ),
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"): (
        "create_reaction",
        "reactions/reactions#create-reaction-for-an-issue-comment",
    ),
}


class IssuesMixin:
    """Issues for ``GitHubStandIn``; the attributes below are the stand-in's."""

    _lock: threading.RLock
    _ids: Ids
    _users: dict[str, User]
    _issues: dict[tuple[str, int], Issue]
    _comments: dict[int, Comment]
    _reactions: list[Reaction]
    bot_user: User
    api_url: str
    objects: Objects

    # the stand-in's helpers (github.py)
    add_user: Any
    _repo: Any
    _author_association: Any
    _need_token: Any
    _scoped_repo: Any
    _need_permission: Any
    _page: Any

    # ------------------------------------------------------------------ builders

    def add_issue(
        self,
        full_name: str,
        number: int,
        title: str,
        body: str | None,
        user_login: str,
        user_id: int | None = None,
        *,
        labels: Iterable[str] = (),
    ) -> Issue:
        with self._lock:
            repo = self._repo(full_name)
            if (repo.full_name.lower(), number) in self._issues:
                raise ValueError(f"{full_name}#{number} already exists")
            user = self.add_user(user_login, user_id)
            issue = Issue(
                id=self._ids.next("issue"),
                repo=repo,
                number=number,
                title=title,
                body=body,
                user=user,
                labels=list(labels),
            )
            self._issues[(repo.full_name.lower(), number)] = issue
            return issue

    def add_comment(self, full_name: str, issue_number: int, body: str, user_login: str) -> Comment:
        """Seed an existing comment (e.g. the ``/claude`` comment that triggers a run)."""
        with self._lock:
            issue = self._issue(self._repo(full_name), issue_number)
            user = self._users.get(user_login.lower()) or self.add_user(user_login)
            comment = Comment(
                id=self._ids.next("comment"),
                repo=issue.repo,
                issue_number=issue_number,
                user=user,
                body=body,
            )
            self._comments[comment.id] = comment
            return comment

    # ------------------------------------------------------------------ accessors

    @property
    def comments(self) -> list[Comment]:
        with self._lock:
            return sorted(self._comments.values(), key=lambda c: c.id)

    @property
    def reactions(self) -> list[Reaction]:
        with self._lock:
            return list(self._reactions)

    @property
    def issues(self) -> list[Issue]:
        with self._lock:
            return sorted(self._issues.values(), key=lambda i: i.id)

    # ------------------------------------------------------------------ internals

    def _issue(self, repo: Repo, number: int) -> Issue:
        issue = self._issues.get((repo.full_name.lower(), number))
        if issue is None:
            raise ApiError(404, "Not Found")
        return issue

    def _next_number(self, repo: Repo) -> int:
        numbers = [n for (name, n) in self._issues if name == repo.full_name.lower()]
        return max(numbers, default=0) + 1

    def _issue_permission(self, token: Token, issue: Issue, level: str) -> None:
        if issue.is_pull:
            self._need_permission(token, ("issues", level), ("pull_requests", level))
        else:
            self._need_permission(token, ("issues", level))

    # -------------------------------------------------------- REST: issues & comments

    def _h_get_issue(
        self,
        *,
        auth: str | None,
        credential: Any,
        owner: str,
        repo: str,
        issue_number: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        issue = self._issue(found, issue_number)
        self._issue_permission(token, issue, "read")
        return 200, self._issue_json(issue), {}

    def _issue_json(self, issue: Issue) -> dict[str, Any]:
        count = sum(
            1
            for c in self._comments.values()
            if c.repo is issue.repo and c.issue_number == issue.number
        )
        return self.objects.issue(issue, count, self._author_association(issue.repo, issue.user))

    def _comment_json(self, comment: Comment) -> dict[str, Any]:
        issue = self._issues.get((comment.repo.full_name.lower(), comment.issue_number))
        return self.objects.issue_comment(
            comment,
            [
                r
                for r in self._reactions
                if r.subject == "issue_comment" and r.comment_id == comment.id
            ],
            self._author_association(comment.repo, comment.user),
            is_pull=bool(issue and issue.is_pull),
        )

    def _h_list_comments(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        issue_number: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        issue = self._issue(found, issue_number)
        self._issue_permission(token, issue, "read")
        comments = [
            c
            for c in sorted(self._comments.values(), key=lambda c: c.id)
            if c.repo is found and c.issue_number == issue_number
        ]
        since = request.args.get("since")
        if since:
            comments = [c for c in comments if c.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") >= since]
        url = f"{self.api_url}/repos/{found.full_name}/issues/{issue_number}/comments"
        page, headers = self._page(request, comments, url)
        return 200, [self._comment_json(c) for c in page], headers

    def _h_create_comment(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        issue_number: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        issue = self._issue(found, issue_number)
        self._issue_permission(token, issue, "write")
        text = self._comment_body(payload)
        comment = Comment(
            id=self._ids.next("comment"),
            repo=found,
            issue_number=issue_number,
            user=self.bot_user,
            body=text,
        )
        self._comments[comment.id] = comment
        issue.updated_at = now()
        body = self._comment_json(comment)
        return 201, body, {"Location": body["url"]}

    @staticmethod
    def _comment_body(payload: Any, resource: str = "IssueComment") -> str:
        if not isinstance(payload, dict) or "body" not in payload:
            raise ApiError(422, 'Invalid request.\n\n"body" wasn\'t supplied.')
        text = payload["body"]
        if not isinstance(text, str):
            raise ApiError(
                422,
                f"Invalid request.\n\nFor 'properties/body', {json.dumps(text)} is not a string.",
            )
        if len(text) > MAX_COMMENT_BODY:
            raise ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": resource,
                        "code": "custom",
                        "field": "body",
                        "message": "body is too long (maximum is 65536 characters)",
                    }
                ],
            )
        return text

    def _scoped_comment(self, token: Token, owner: str, repo: str, comment_id: int) -> Comment:
        found = self._scoped_repo(token, owner, repo)
        comment = self._comments.get(comment_id)
        if comment is None or comment.repo is not found:
            raise ApiError(404, "Not Found")
        return comment

    def _h_get_comment(
        self,
        *,
        auth: str | None,
        credential: Any,
        owner: str,
        repo: str,
        comment_id: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        comment = self._scoped_comment(token, owner, repo, comment_id)
        self._issue_permission(token, self._issue(comment.repo, comment.issue_number), "read")
        return 200, self._comment_json(comment), {}

    def _h_update_comment(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        comment_id: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        comment = self._scoped_comment(token, owner, repo, comment_id)
        self._issue_permission(token, self._issue(comment.repo, comment.issue_number), "write")
        comment.body = self._comment_body(payload)
        comment.updated_at = now()
        return 200, self._comment_json(comment), {}

    def _h_create_reaction(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        comment_id: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        comment = self._scoped_comment(token, owner, repo, comment_id)
        self._issue_permission(token, self._issue(comment.repo, comment.issue_number), "write")
        return self._react("issue_comment", comment.id, payload)

    def _react(
        self, subject: str, comment_id: int, payload: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """The bot's reaction to a comment (``subject``: issue_comment or review_comment):
        201 when new, 200 with the existing one when it reacted so already."""
        content = payload.get("content") if isinstance(payload, dict) else None
        if content not in REACTION_CONTENTS:
            raise ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "Reaction",
                        "code": "custom",
                        "field": "content",
                        "message": "content is not included in the list",
                    }
                ],
            )
        for existing in self._reactions:
            if (
                existing.subject == subject
                and existing.comment_id == comment_id
                and existing.user is self.bot_user
                and existing.content == content
            ):
                return 200, self.objects.reaction(existing), {}
        reaction = Reaction(
            id=self._ids.next("reaction"),
            comment_id=comment_id,
            user=self.bot_user,
            content=content,
            subject=subject,
        )
        self._reactions.append(reaction)
        return 201, self.objects.reaction(reaction), {}
