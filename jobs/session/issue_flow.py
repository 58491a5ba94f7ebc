"""An issue into a pull request: clone the default branch, run the agent, open a pull request."""

from __future__ import annotations

from jobs.session.agent import agent_work
from jobs.session.commits import branch_name, pull_body, title_line
from jobs.session.material import gather
from jobs.session.prompt import implement_prompt
from jobs.session.state import Session


def implement_issue(session: Session) -> dict:
    request, github, base = session.request, session.github, session.default_branch
    issue = github.issue(request.number)
    title = issue.get("title") or ""
    material = gather(github, request, issue, request.triggered_at)
    workspace = session.clone(base)
    try:
        prompt = implement_prompt(request, f"branch {base}", material)
        work = agent_work(session, workspace, prompt, title)
        if isinstance(work, dict):
            return work
        branch = workspace.free_branch(branch_name(session, "issue", title))
        workspace.push(branch, protected=(base,))
        pull = github.open_pull(
            title=title_line(request.instruction or title or f"Issue #{request.number}"),
            head=branch,
            base=base,
            body=pull_body(session, work.outcome.result, f"Closes #{request.number}"),
            draft=session.config.draft_pull_requests,
        )
        session.tracking.pull_request_opened(pull, work.outcome, work.note)
        return {
            "status": "pull_request",
            "pull_request": pull["html_url"],
            "branch": branch,
            "commit": work.change.sha,
            "cost_usd": work.outcome.cost_usd,
            "turns": work.outcome.num_turns,
        }
    finally:
        workspace.remove()
