"""A few browser pages for the GitHub stand-in, so a person can try the service by hand.

``PagesMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). It is what
``python -m tests.standins`` offers a newcomer with no GitHub at hand: an index of the
repositories, issues and pull requests; an issue's page with its comments and a form to comment
(which, like GitHub, delivers an ``issue_comment`` webhook to the App when it is installed
there); a form for a new issue; and a pull request's page with its diff.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from werkzeug.wrappers import Request, Response

from .github_objects import Comment, Issue, Objects, PullRequest, Repo, User

STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
    "pre{background:#f6f8fa;padding:.6rem;overflow:auto;white-space:pre-wrap}"
    ".comment{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0;padding:.2rem .8rem}"
    "textarea,input{width:100%;font:inherit;box-sizing:border-box}"
)


def html_page(title: str, body: str, status: int = 200) -> Response:
    """A page of the stand-in's web side, as a browser gets it (every page shares this)."""
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><main><p><a href='/'>GitHub stand-in</a></p>"
        f"<h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return Response(text, status=status, content_type="text/html; charset=utf-8")


def error_page(title: str, message: str, status: int) -> Response:
    text = f"<p class='flash-error'>{html.escape(message)}</p>"
    return html_page(title, text, status)


class PagesMixin:
    """The browser pages (see the module docstring)."""

    _lock: threading.RLock
    _app: dict[str, Any]
    _repos: dict[str, Repo]
    _users: dict[str, User]
    webhook_url: str | None
    objects: Objects

    # the stand-in's helpers
    add_issue: Any
    add_comment: Any
    add_user: Any
    deliver: Any
    git: Any
    issues: list[Issue]
    comments: list[Comment]
    pulls: list[PullRequest]
    _issue_json: Any
    _comment_json: Any

    def _browse_page(self, request: Request) -> Response | None:
        parts = request.path.strip("/").split("/")
        if request.path == "/":
            return self._index()
        if len(parts) < 3 or f"{parts[0]}/{parts[1]}".lower() not in self._repos:
            return None
        repo = self._repos[f"{parts[0]}/{parts[1]}".lower()]
        if parts[2:] == ["issues", "new"]:
            return self._new_issue(request, repo)
        if len(parts) == 4 and parts[2] == "issues" and parts[3].isdigit():
            return self._issue_page(request, repo, int(parts[3]))
        if len(parts) == 4 and parts[2] == "pull" and parts[3].isdigit():
            return self._pull_page(repo, int(parts[3]))
        return None

    def _index(self) -> Response:
        hook = self.webhook_url or "none yet (register the App: open the service's /setup)"
        rows = []
        for repo in sorted(self._repos.values(), key=lambda r: r.full_name):
            installed = "installed" if repo.installation_id else "App not installed"
            issues = "".join(
                f"<li><a href='/{i.repo.full_name}/{'pull' if i.is_pull else 'issues'}/"
                f"{i.number}'>#{i.number} {html.escape(i.title)}</a></li>"
                for i in self.issues
                if i.repo is repo
            ) + "".join(
                f"<li><a href='/{repo.full_name}/pull/{p.number}'>#{p.number} "
                f"{html.escape(p.title)} (pull request)</a></li>"
                for p in self.pulls
                if p.full_name == repo.full_name
            )
            rows.append(
                f"<h2>{html.escape(repo.full_name)}</h2><p>{installed} · "
                f"<a href='/{repo.full_name}/issues/new'>New issue</a></p><ul>{issues}</ul>"
            )
        body = (
            f"<p>App: {html.escape(self._app['name'])} · webhook: {html.escape(hook)}</p>"
            + "".join(rows)
        )
        return html_page("Repositories", body)

    def _new_issue(self, request: Request, repo: Repo) -> Response:
        if request.method == "POST":
            title = (request.form.get("title") or "").strip() or "Untitled"
            with self._lock:
                taken = [i.number for i in self.issues if i.repo is repo]
                number = max([0, *taken]) + 1
                self.add_issue(repo.full_name, number, title, request.form.get("body"), "octocat")
            return Response(status=303, headers={"Location": f"/{repo.full_name}/issues/{number}"})
        form = (
            "<form method='post'><label>Title <input name='title' id='title'></label>"
            "<label>Body <textarea name='body' rows='4'></textarea></label>"
            "<button type='submit' id='open-issue'>Open the issue</button></form>"
        )
        return html_page(f"New issue in {repo.full_name}", form)

    def _issue_page(self, request: Request, repo: Repo, number: int) -> Response | None:
        issue = next((i for i in self.issues if i.repo is repo and i.number == number), None)
        if issue is None:
            return None
        if request.method == "POST":
            comment = self.add_comment(repo.full_name, number, request.form["body"], "octocat")
            self._deliver_comment(issue, comment)
            return Response(status=303, headers={"Location": request.path})
        comments = "".join(
            f"<div class='comment'><p><strong>{html.escape(c.user.login)}</strong></p>"
            f"<pre>{html.escape(c.body)}</pre></div>"
            for c in self.comments
            if c.repo is repo and c.issue_number == number
        )
        pulls = "".join(
            f"<li><a href='/{repo.full_name}/pull/{p.number}'>#{p.number} "
            f"{html.escape(p.title)}</a></li>"
            for p in self.pulls
            if p.full_name == repo.full_name and f"#{number}" in (p.body or "")
        )
        body = (
            f"<pre>{html.escape(issue.body or '')}</pre>{comments}"
            + (f"<h2>Pull requests</h2><ul id='pulls'>{pulls}</ul>" if pulls else "")
            + "<form method='post'><label>Comment as octocat "
            "<textarea name='body' id='comment' rows='3'>/claude </textarea></label>"
            "<button type='submit' id='send'>Comment</button></form>"
        )
        return html_page(f"#{number} {issue.title}", body)

    def _deliver_comment(self, issue: Issue, comment: Comment) -> None:
        """The webhook GitHub sends for a new comment, when the App is installed there."""
        repo = issue.repo
        if not repo.installation_id or not self.webhook_url:
            return
        with self._lock:
            payload = {
                "action": "created",
                "issue": self._issue_json(issue),
                "comment": self._comment_json(comment),
                "repository": self.objects.repository(repo),
                "sender": self.objects.simple_user(comment.user),
                "installation": {"id": repo.installation_id},
            }
        threading.Thread(target=self.deliver, args=("issue_comment", payload), daemon=True).start()

    def _pull_page(self, repo: Repo, number: int) -> Response | None:
        pull = next(
            (p for p in self.pulls if p.full_name == repo.full_name and p.number == number), None
        )
        if pull is None:
            return None
        diff = self.git(repo.full_name, "diff", f"{pull.base_ref}...{pull.head_ref}")
        body = (
            f"<p>{html.escape(pull.head_ref)} → {html.escape(pull.base_ref)} by "
            f"{html.escape(pull.user.login)}</p><pre>{html.escape(pull.body or '')}</pre>"
            f"<h2>Changes</h2><pre id='diff'>{html.escape(diff)}</pre>"
        )
        return html_page(f"#{number} {pull.title}", body)
