"""A fork's pull request: Claude's change goes back to its author, never to a fork's branch.

A fork's head cannot be pushed with this installation's token, so the session fetches it
through the base repository's `refs/pull/N/head`, on the head the request was made on (its
author may have pushed since a maintainer read the diff). What the agent changed then goes back
as `fork_pull_requests` says:

* `suggest` (the default): each stretch of a file the pull request's diff shows becomes a
  suggestion in one review on that head; the files suggestions cannot carry go into a `git am`
  patch in the tracking comment (jobs/github/suggestions.py). Nothing reaches a branch of the
  base repository, where the fork's commits would run workflows with its secrets; a run that
  times out saves no partial branch.
* `follow_up`: a pull request of this repository built on the fork's head, by consent.
"""

from __future__ import annotations

from jobs.common.redact import redactor
from jobs.github.diff import parse_diff
from jobs.github.suggestions import offer, quoted_patch
from jobs.sandbox.workspace import Workspace
from jobs.session.agent import Work, agent_work
from jobs.session.commits import branch_name, pull_body, title_line
from jobs.session.prompt import pull_request_prompt
from jobs.session.state import Session


def implement_fork_pull(session: Session, prompt: str = "") -> dict:
    """`prompt`: what Claude is asked, when not the thread's request (`fix ci`)."""
    request, pull = session.request, session.pull
    accepted_head = request.head_sha or pull["head"]["sha"]
    suggest = session.config.fork_pull_requests == "suggest"
    prompt = prompt or pull_request_prompt(session)
    workspace = session.clone(f"refs/pull/{request.number}/head")
    try:
        if workspace.base_sha != accepted_head:
            session.tracking.head_moved(accepted_head, workspace.base_sha)
            return {"status": "head_moved", "accepted": accepted_head, "now": workspace.base_sha}
        work = agent_work(session, workspace, prompt, pull.get("title") or "", not suggest)
        if isinstance(work, dict):
            return work
        if suggest:
            return offer_to_fork(session, workspace, work)
        return open_follow_up(session, workspace, work)
    finally:
        workspace.remove()


def offer_to_fork(session: Session, workspace: Workspace, work: Work) -> dict:
    """The change as suggestions on the pull request's diff, and the rest as a patch."""
    request, github = session.request, session.github
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
    session.tracking.suggested(
        review_url, len(result.suggestions), patch, result.patch_paths, work.outcome, work.note
    )
    return {
        "status": "suggested",
        "suggestions": len(result.suggestions),
        "patch_files": result.patch_paths,
        "cost_usd": work.outcome.cost_usd,
    }


def open_follow_up(session: Session, workspace: Workspace, work: Work) -> dict:
    """The change as a pull request of this repository on the fork's head (`follow_up`)."""
    request, pull = session.request, session.pull
    title = pull.get("title") or ""
    branch = workspace.free_branch(branch_name(session, "pr", title))
    workspace.push(branch, protected=(session.default_branch,))
    source = session.head_repo.get("full_name") or "a fork"
    follow_up = session.github.open_pull(
        title=title_line(f"Follow-up to #{request.number}: {title}"),
        head=branch,
        base=pull["base"]["ref"],
        body=pull_body(
            session,
            work.outcome.result,
            f"Follow-up to #{request.number}, built on its head from {source}.",
        ),
        draft=session.config.draft_pull_requests,
    )
    note = work.note + (
        f"#{request.number} comes from a fork, which this app cannot push to, so the changes "
        f"are in a follow-up pull request built on its head (`{branch}`)."
    )
    session.tracking.pull_request_opened(follow_up, work.outcome, note=note)
    return {"status": "follow_up", "pull_request": follow_up["html_url"], "branch": branch}
