"""The tracking comment: the user's window on a session, edited in place until it is final.

A hidden marker names the session, so the bot can find its own comment again (after a retry, or
to tell it apart from a user quoting it) and never mistakes it for a command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from githubkit.exception import GitHubException

from jobs.github import RepoSession
from jobs.redact import redactor
from jobs.transcript import Outcome

log = logging.getLogger(__name__)

# GitHub refuses bodies over 65,536 characters; leave room for the header and footer.
MAX_TEXT = 60_000


def marker(session_id: str, state: str = "working") -> str:
    """Hidden in the body: which session the comment tracks and whether it is final."""
    return f"<!-- claudecluster:session {session_id} state={state} -->"


def fit(text: str, limit: int = MAX_TEXT) -> str:
    """Shorten the middle of an over-long text without leaving a code fence open."""
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}\n\n… ({len(text) - limit:,} characters cut) …\n\n{text[-half:]}"
    if text.count("```") % 2:
        text += "\n```"
    return text


def quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.strip().splitlines()) or "> (empty)"


def stats(outcome: Outcome, seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    took = f"{minutes}m {secs}s" if minutes else f"{secs}s"
    return f"<sub>⏱ {took} · {outcome.num_turns} turns · ${outcome.cost_usd:.4f}</sub>"


@dataclass
class TrackingComment:
    github: RepoSession
    number: int
    session_id: str
    instruction: str
    comment_id: int = 0

    def start(self, trigger_comment_id: int) -> None:
        try:
            self.github.react(trigger_comment_id, "eyes")
        except GitHubException as exc:
            # The 👀 is a courtesy; the tracking comment is what the user waits for.
            log.warning("session %s: reaction failed (%s)", self.session_id, type(exc).__name__)
        working = self._body("👀 **Claude is working on this…**", state="working")
        created = self.github.comment(self.number, working)
        self.comment_id = created["id"]

    def pull_request_opened(self, pull: dict, outcome: Outcome, seconds: float) -> None:
        self._final(
            f"✅ **Claude opened #{pull['number']}**: {pull['html_url']}",
            outcome.result, stats(outcome, seconds), state="done",
        )  # fmt: skip

    def no_changes(self, outcome: Outcome, seconds: float) -> None:
        self._final(
            "💬 **No changes were needed.**", outcome.result, stats(outcome, seconds), "done"
        )

    def failed(self, reason: str, outcome: Outcome | None = None, seconds: float = 0) -> None:
        footer = stats(outcome, seconds) if outcome else ""
        self._final("❌ **Claude could not finish this.**", f"Reason: {reason}", footer, "failed")

    def _final(self, headline: str, text: str, footer: str, state: str) -> None:
        self.github.edit_comment(self.comment_id, self._body(headline, text, footer, state))

    def _body(self, headline: str, text: str = "", footer: str = "", state: str = "") -> str:
        parts = [headline, f"**Request:**\n{quote(fit(self.instruction, 2_000))}"]
        if text:
            parts.append(fit(text))
        if footer:
            parts.append(footer)
        parts.append(marker(self.session_id, state))
        return redactor("\n\n".join(parts))
