"""A fork's pull request in `suggest` mode: Claude's change goes back to its author, not pushed.

The session ran on the fork's head as it was when the request came; its commit stays in the
workspace. Each stretch of a file the pull request's diff shows becomes a suggestion in one
review on that head; the files suggestions cannot carry go into a `git am` patch in the tracking
comment (jobs/suggestions.py). Nothing reaches a branch of the base repository, where the fork's
commits would run workflows with its secrets.
"""

from __future__ import annotations

from jobs.diff import parse_diff
from jobs.github import RepoSession
from jobs.redact import redactor
from jobs.request import SessionRequest
from jobs.suggestions import offer, quoted_patch
from jobs.tracking import TrackingComment
from jobs.transcript import Outcome
from jobs.workspace import Workspace


def offer_to_fork(
    github: RepoSession,
    request: SessionRequest,
    workspace: Workspace,
    outcome: Outcome,
    note: str,
    tracking: TrackingComment,
) -> dict:
    head = workspace.base_sha
    change = parse_diff(workspace.change_diff())
    pull = parse_diff(github.pull_diff(request.number))
    result = offer(
        change,
        pull,
        lambda p: workspace.file_lines(head, p),
        lambda p: workspace.file_lines("HEAD", p),
    )
    review_url = ""
    if result.suggestions:
        comments = [s.comment() for s in result.suggestions]
        for comment in comments:
            comment["body"] = redactor(comment["body"])
        review = {
            "commit_id": head,
            "event": "COMMENT",
            "comments": comments,
            "body": redactor(
                f"Claude's changes for @{request.requester}'s request, as suggestions on this "
                "pull request's head."
            ),
        }
        posted = github.create_review(request.number, review)
        review_url = posted.get("html_url") or ""
    patch = (
        quoted_patch(redactor(workspace.patch(result.patch_paths))) if result.patch_paths else ""
    )
    tracking.suggested(
        review_url, len(result.suggestions), patch, result.patch_paths, outcome, note
    )
    return {
        "status": "suggested",
        "suggestions": len(result.suggestions),
        "patch_files": result.patch_paths,
        "cost_usd": outcome.cost_usd,
    }
