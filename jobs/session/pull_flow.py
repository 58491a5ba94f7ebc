"""A pull request into new commits on its own head, when that head is in this repository."""

from __future__ import annotations

from jobs.session.agent import agent_work
from jobs.session.prompt import pull_request_prompt
from jobs.session.state import Session


def implement_pull(session: Session, prompt: str = "") -> dict:
    """`prompt`: what Claude is asked, when not the thread's request (`fix ci`)."""
    pull = session.pull
    head_ref = pull["head"]["ref"]
    prompt = prompt or pull_request_prompt(session)
    workspace = session.clone(head_ref)
    try:
        work = agent_work(session, workspace, prompt, pull.get("title") or "")
        if isinstance(work, dict):
            return work
        workspace.push(head_ref, protected=(session.default_branch,))
        commit_url = f"{session.repository['html_url']}/commit/{work.change.sha}"
        session.tracking.pushed(head_ref, commit_url, work.change.files, work.outcome, work.note)
        return {
            "status": "pushed",
            "branch": head_ref,
            "commit": work.change.sha,
            "cost_usd": work.outcome.cost_usd,
        }
    finally:
        workspace.remove()
