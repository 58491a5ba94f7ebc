"""What Claude is shown besides the instruction: the thread, quoted as material.

Anyone can write an issue, a PR description or a comment, so all of it is quoted and cleaned of
what a human reader would not see (HTML comments, invisible and bidirectional-control
characters), comments edited after the trigger are dropped, and the whole is bounded in size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.common.request import MARKER, SessionRequest
from jobs.github.ci import CiReport
from jobs.github.client import RepoSession
from jobs.session.framing import HIDDEN, INVISIBLE, tag

MAX_SECTION = 12_000
MAX_MATERIAL = 60_000
MAX_DIFF = 40_000


def clean(text: str | None, limit: int = MAX_SECTION) -> str:
    text = INVISIBLE.sub("", HIDDEN.sub("", text or ""))
    return text if len(text) <= limit else text[:limit] + "\n… (cut)"


@dataclass(frozen=True)
class Section:
    kind: str  # issue, pull_request, comment, review_comment, diff, diff_hunk, check_run
    text: str
    attributes: dict[str, object] = field(default_factory=dict)

    def render(self) -> str:
        # Quoted: whatever the text holds, it cannot close this section or the material.
        return tag(self.kind, self.text, **self.attributes)


def _is_ours(comment: dict) -> bool:
    user = comment.get("user") or {}
    return user.get("type") == "Bot" or MARKER in (comment.get("body") or "")


def _before(comment: dict, trigger_time: str) -> bool:
    # Edited after the trigger: someone may be steering a running session; leave it out.
    return not trigger_time or (comment.get("updated_at") or "") <= trigger_time


def gather(
    github: RepoSession,
    request: SessionRequest,
    thread: dict,
    trigger_time: str = "",
    diff: str | None = None,
) -> list[Section]:
    """The thread's text as material sections, oldest first, within MAX_MATERIAL."""
    kind = "pull_request" if request.pull else "issue"
    sections = [
        Section(
            kind,
            f"Title: {clean(thread.get('title'), 500)}\n\n{clean(thread.get('body'))}",
            {"number": request.number, "author": (thread.get("user") or {}).get("login")},
        )
    ]
    for comment in github.issue_comments(request.number):
        if comment.get("id") == request.comment_id or _is_ours(comment):
            continue
        # Ids grow with time: a later id was posted after the trigger, whatever its timestamp.
        later = request.comment_id and int(comment.get("id") or 0) > request.comment_id
        if _before(comment, trigger_time) and not later:
            author = (comment.get("user") or {}).get("login")
            sections.append(Section("comment", clean(comment.get("body")), {"author": author}))
    if request.pull:
        for comment in github.review_comments(request.number):
            if comment.get("id") == request.review_comment_id or _is_ours(comment):
                continue
            if _before(comment, trigger_time):
                where = {"path": comment.get("path"), "line": comment.get("line")}
                author = (comment.get("user") or {}).get("login")
                attributes = {**where, "author": author}
                sections.append(Section("review_comment", clean(comment.get("body")), attributes))
    if diff is not None:
        sections.append(Section("diff", clean(diff, MAX_DIFF)))
    return bounded(sections)


def bounded(sections: list[Section]) -> list[Section]:
    """Keep the thread's head and its newest parts when it is too long for the prompt."""
    total = sum(len(s.text) for s in sections)
    while total > MAX_MATERIAL and len(sections) > 2:
        dropped = sections.pop(1)
        total -= len(dropped.text)
    return sections


def focus_for(github: RepoSession, request: SessionRequest) -> tuple[str, list[Section]]:
    """For inline and review triggers: where in the code the request points, as a sentence of
    ours and the quoted material it points at (the diff hunk, the review's comments)."""
    if request.review_comment_id:
        comment = github.review_comment(request.review_comment_id)
        start, end = comment.get("start_line") or comment.get("line"), comment.get("line")
        lines = f"line {end}" if start == end else f"lines {start}–{end}"
        hunk = Section(
            "diff_hunk",
            clean((comment.get("diff_hunk") or "")[-4000:]),
            {"path": comment.get("path"), "lines": lines},
        )
        return (
            "The request was made on a line of the diff: the <diff_hunk> in the material shows "
            f"where ({lines} of the file its path attribute names).",
            [hunk],
        )
    if request.review_id:
        comments = github.comments_of_review(request.number, request.review_id)
        quoted = [
            Section(
                "review_comment",
                clean(c.get("body"), 1500),
                {"path": c.get("path"), "line": c.get("line"), "review": request.review_id},
            )
            for c in comments
        ]
        return (
            "The request came with a review: its inline comments, quoted in the material as "
            f'<review_comment review="{request.review_id}">, are part of the task.',
            quoted,
        )
    return "", []


def ci_sections(report: CiReport) -> list[Section]:
    """The head's failing check runs: each one's own output, its failed steps and the tail of
    its log (already bounded and redacted by jobs/github/ci.py), cleaned as any material."""
    sections = []
    for failure in report.failures:
        parts = [failure.summary]
        if failure.failed_steps:
            parts.append("Failed steps: " + ", ".join(failure.failed_steps))
        if failure.note:
            parts.append(f"({failure.note})")
        if failure.log:
            parts.append(f"The end of its log:\n{failure.log}")
        attributes = {"name": failure.name, "conclusion": failure.conclusion}
        text = "\n\n".join(filter(None, parts)) or "(no output)"
        sections.append(Section("check_run", clean(text, MAX_SECTION), attributes))
    return sections
