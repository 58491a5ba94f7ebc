"""What a session writes into git and onto GitHub: branch names, commit messages, PR bodies."""

from __future__ import annotations

import re

from jobs.common.history import page_url
from jobs.common.redact import redactor
from jobs.common.request import Mode, SessionRequest
from jobs.sandbox.workspace import Change
from jobs.session.repo_config import RepoConfig
from jobs.session.state import Session

WORKFLOWS = ".github/workflows/"


def branch_name(session: Session, kind: str, title: str, suffix: str = "") -> str:
    """`claude/issue-12-fix-the-flaky-test`: the config's prefix, the thread, its title."""
    prefix, number = session.config.branch_prefix, session.request.number
    return f"{prefix}{kind}-{number}-{slug(title)}{suffix}"


def withheld_paths(config: RepoConfig) -> tuple[str, ...]:
    # Workflow files run with the repository's secrets on the next push: only by consent.
    return () if config.allow_workflow_changes else (WORKFLOWS,)


def withheld_note(change: Change | None) -> str:
    if change is None or not change.withheld:
        return ""
    listed = ", ".join(f"`{path}`" for path in change.withheld[:20])
    return (
        f"⚠️ Changes to workflow files were left out: {listed}. Workflows run with this "
        "repository's secrets; set `allow_workflow_changes: true` in `.github/claude.yml` to "
        "let Claude change them.\n\n"
    )


def slug(text: str, limit: int = 30) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "task"


def title_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "Changes by Claude"
    line = line[0].upper() + line[1:]
    return line if len(line) <= 72 else line[:71].rstrip() + "…"


# Who commits a local run (`claudecluster run`): the agent, as the App's bot does on GitHub;
# the person who asked is the co-author, as the requester is there.
LOCAL_AUTHOR = ("Claude", "noreply@anthropic.com")


def _message(instruction: str, summary: str, requested: str, co_author: str) -> str:
    body = summary.strip()[:4000]
    trailer = f"\n\nCo-authored-by: {co_author}\n" if co_author else "\n"
    return f"{title_line(instruction)}\n\n{body}\n\n{requested}{trailer}"


def commit_message(request: SessionRequest, summary: str) -> str:
    thread = "pull request" if request.pull else "issue"
    title = request.instruction or f"Resolve {thread} #{request.number}"
    if request.mode == Mode.FIX_CI:  # its words only add to the command
        title = f"Fix the failing checks of #{request.number}"
    return _message(
        title,
        summary,
        f"Requested by @{request.requester} in #{request.number}.",
        f"{request.requester} "
        f"<{request.requester_id}+{request.requester}@users.noreply.github.com>",
    )


def local_commit_message(instruction: str, summary: str, co_author: str = "") -> str:
    """A local run's message: the task, Claude's summary, and the asker (`Name <email>` from
    their git identity, if they have one) as co-author."""
    return _message(instruction, summary, "Requested locally with `claudecluster run`.", co_author)


def pull_body(session: Session, summary: str, lead: str) -> str:
    """The pull request's description; with PUBLIC_URL set it links to the session's page."""
    request = session.request
    page = page_url(session.settings, session.id)
    log = f" [Session log]({page})." if page else ""
    return redactor(
        f"{lead}\n\n{summary.strip()[:50_000]}\n\n---\n"
        f"Requested by @{request.requester} in #{request.number}.{log}"
    )
