"""A review session: Claude reads the pull request read-only and a real review is posted.

Claude answers with a structured review (`--json-schema`); comments on lines of the diff become
inline comments, the others are folded into the summary. A review never pushes.
"""

from __future__ import annotations

from jobs.common.redact import redactor
from jobs.github.diff import parse_diff
from jobs.github.tracking import PUBLISHING
from jobs.sandbox.container import CONTROL_DIR
from jobs.session.agent import finished_badly, run_agent
from jobs.session.material import gather
from jobs.session.review import (
    ReviewAsk,
    parse_review,
    review_cli_args,
    review_prompt,
    to_github_review,
)
from jobs.session.state import Session

# In the control dir, never in the tree (see Workspace.write_control); the review's CLI may read
# that one folder besides the tree.
REVIEW_DIR = "review"
DIFF_FILE = f"{REVIEW_DIR}/pull-request.diff"


def review_pull(session: Session) -> dict:
    request, github, tracking = session.request, session.github, session.tracking
    pull = session.pull
    diff = github.pull_diff(request.number)
    # The diff and the head must agree, or the inline comments land on the wrong lines.
    if github.pull(request.number)["head"]["sha"] != pull["head"]["sha"]:
        pull = github.pull(request.number)
        diff = github.pull_diff(request.number)
    head_sha = pull["head"]["sha"]
    material = gather(github, request, pull, request.triggered_at)[1:]
    workspace = session.clone(f"refs/pull/{request.number}/head")
    try:
        workspace.write_control(DIFF_FILE, diff)
        ask = ReviewAsk(request.repo, request.number, request.instruction, request.requester)
        prompt = review_prompt(
            ask,
            pull,
            diff,
            material=material,
            diff_file=f"{CONTROL_DIR}/{DIFF_FILE}",
        )
        extra = [*review_cli_args(), f"--add-dir={CONTROL_DIR}/{REVIEW_DIR}"]
        # A review of a fork runs none of the fork's code: its setup commands would.
        run = run_agent(
            session, workspace, prompt, extra_args=extra, run_setup=not session.from_fork
        )
        if bad := finished_badly(session, run):
            return bad
        outcome = run.outcome
        if outcome.structured is None:
            tracking.failed("Claude did not return a structured review", outcome)
            return {"status": "failed", "reason": "no structured review"}

        tracking.advance(PUBLISHING)
        draft = parse_review(outcome.structured)
        own = (pull.get("user") or {}).get("login") == session.bot.login
        review = to_github_review(draft, parse_diff(diff), head_sha, own_pull_request=own)
        review["body"] = redactor(review["body"])
        for comment in review.get("comments", []):
            comment["body"] = redactor(comment["body"])
        posted = github.create_review(request.number, review)
        inline = len(review.get("comments", []))
        outcome.result = draft.summary
        tracking.review_posted(posted.get("html_url") or pull["html_url"], inline, outcome)
        return {"status": "reviewed", "inline_comments": inline, "cost_usd": outcome.cost_usd}
    finally:
        workspace.remove()
