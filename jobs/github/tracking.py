"""The tracking comment: the user's window on a session, edited in place until it is final.

While the session runs it shows a checklist of the steps with the current one marked, Claude's
last few actions and the elapsed time; at the end it becomes the outcome. A hidden marker names
the session and its state, so the bot can find its own comment again and never mistakes it (or a
user quoting it) for a command. Edits are paced per installation (jobs/github/pacing.py); the
progress edits are made off the session's path (jobs/github/progress.py).

The dashboard is the other window: each step, each event of the CLI and the end also go to the
session's history (jobs/common/history.py), and with PUBLIC_URL set the comment links to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from githubkit.exception import GitHubException

from jobs.common.history import SessionHistory
from jobs.common.redact import redactor
from jobs.common.request import MARKER, SessionRequest
from jobs.github.checks import CheckRun
from jobs.github.client import RepoSession
from jobs.github.pacing import Pacer
from jobs.github.progress import ProgressWriter
from jobs.sandbox.transcript import Outcome

log = logging.getLogger(__name__)

# GitHub refuses bodies over 65,536 characters; leave room for the header and footer.
MAX_TEXT = 60_000
PROGRESS_INTERVAL = 5.0  # seconds between two progress edits of one comment
SHOWN_ACTIONS = 6

QUEUED, PREPARING, RUNNING, PUBLISHING, DONE = range(5)
STEPS = {
    "implement": (
        "Queued",
        "Preparing the workspace",
        "Running Claude",
        "Pushing the changes",
        "Done",
    ),
    "review": (
        "Queued",
        "Preparing the workspace",
        "Reviewing with Claude",
        "Posting the review",
        "Done",
    ),
}


def marker(session_id: str, state: str = "working") -> str:
    """Hidden in the body: which session the comment tracks and whether it is final."""
    return f"{MARKER} {session_id} state={state} -->"


def fit(text: str, limit: int = MAX_TEXT) -> str:
    """Shorten the middle of an over-long text without leaving a fence or <details> open."""
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}\n\n… ({len(text) - limit:,} characters cut) …\n\n{text[-half:]}"
    if text.count("```") % 2:
        text += "\n```"
    text += "\n</details>" * max(0, text.count("<details") - text.count("</details>"))
    return text


def quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.strip().splitlines()) or "> (empty)"


def took(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def stats(outcome: Outcome, seconds: float) -> str:
    return f"<sub>⏱ {took(seconds)} · {outcome.num_turns} turns · ${outcome.cost_usd:.4f}</sub>"


@dataclass(frozen=True)
class Ending:
    """How a session ended, as the comment's marker, the history and the check run record it:
    `state` done, failed or stopped (a stop is a failure to the marker); `conclusion` the check
    run's (default: from the state); the links of what it made; the head of a PR it opened."""

    state: str = "done"
    conclusion: str = ""
    links: dict[str, str] = field(default_factory=dict)
    opened_head: str = ""


DONE_ENDING, FAILED_ENDING = Ending(), Ending("failed")


@dataclass
class TrackingComment:
    github: RepoSession
    request: SessionRequest
    session_id: str
    pacer: Pacer | None = None
    history: SessionHistory | None = None
    # The session's check run, which ends as this comment does (a PR's session, or once an
    # issue's session opened one).
    check: CheckRun | None = None
    mode: str = "implement"
    comment_id: int = 0
    step: int = QUEUED
    actions: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    # Whether the run continued the thread's earlier conversation (jobs/session/continuity.py).
    continuity: str = ""
    url: str = ""  # the comment's own page, once posted
    _last_edit: float = 0.0
    _writer: ProgressWriter | None = None

    @property
    def in_review_thread(self) -> bool:
        return bool(self.request.review_comment_id)

    def start(self) -> None:
        self._acknowledge()
        self.step = PREPARING
        self._pace(essential=True)
        body = self._body("👀 **Claude is working on this…**", state="working")
        if self.comment_id:  # the comment that said it was queued (`taken_over`)
            self._edit(body)
            created = {"id": self.comment_id, "html_url": self.url}
        else:
            created = self._create(body)
        self._last_edit = time.monotonic()
        if self.history is not None:
            steps = STEPS.get(self.mode, STEPS["implement"])
            self.history.open(self.request, str(self.mode), created.get("html_url", ""), steps)
            self.history.step(self.step, self._step_name(self.step))

    def _create(self, body: str) -> dict:
        if self.in_review_thread:
            created = self.github.reply_review_comment(
                self.request.number, self.request.review_comment_id, body
            )
        else:
            created = self.github.comment(self.request.number, body)
        self.comment_id = created["id"]
        self.url = str(created.get("html_url") or "")
        return created

    def queued(self, why: str) -> None:
        """Posted for a session still in the queue (jobs/upkeep/queued.py); `start` edits it."""
        self._pace(essential=True)
        self._create(self._body(f"⏳ **Queued**: {why}", state="queued"))

    def taken_over(self, comment_id: int, url: str) -> None:
        """The session's queued comment, to become its tracking comment."""
        self.comment_id, self.url = comment_id, url

    def _acknowledge(self) -> None:
        try:
            if self.request.review_comment_id:
                self.github.react_review_comment(self.request.review_comment_id, "eyes")
            elif self.request.comment_id:
                self.github.react(self.request.comment_id, "eyes")
        except GitHubException as exc:
            # The 👀 is a courtesy; the tracking comment is what the user waits for.
            log.warning("session %s: reaction failed (%s)", self.session_id, type(exc).__name__)

    def waiting(self) -> None:
        """Another session holds this thread: say so until it is our turn."""
        if self.history is not None:
            self.history.state("waiting")
        try:
            self._edit(
                self._body(
                    "⏳ **Waiting for the session already running here to finish…**",
                    state="working",
                )
            )
        except GitHubException as exc:
            log.warning("session %s: waiting edit failed (%s)", self.session_id, exc)

    # -- live progress ------------------------------------------------------------------

    def advance(self, step: int) -> None:
        self.step = step
        if self.history is not None:
            if step == RUNNING:
                self.history.state("running")  # after a wait for the thread, if any
            self.history.step(step, self._step_name(step))
        self._progress(force=True)

    def event(self, event: dict) -> None:
        """One event of the CLI's stream-json, for the dashboard's live stream."""
        if self.history is not None:
            self.history.cli_event(event)

    def action(self, description: str) -> None:
        self.actions.append(description)
        del self.actions[:-SHOWN_ACTIONS]  # only the last few are shown; a loop must not grow it
        self._progress()

    def _progress(self, force: bool = False) -> None:
        if not self.comment_id:
            return
        if self._writer is None:
            self._writer = ProgressWriter(
                self._edit_working, self.pacer, f"progress-{self.session_id}"
            )
        if force:
            self._writer.step()  # a step change: a handful per session, always shown
        elif time.monotonic() - self._last_edit >= PROGRESS_INTERVAL:
            self._writer.action()

    def _edit_working(self) -> None:
        self._edit(self._body("👀 **Claude is working on this…**", state="working"))

    # -- final states -------------------------------------------------------------------

    def pull_request_opened(self, pull: dict, outcome: Outcome, note: str = "") -> None:
        headline = f"✅ **Claude opened #{pull['number']}**: {pull['html_url']}"
        text = "\n\n".join(filter(None, [note, outcome.result]))
        ending = Ending(
            links={"pull request": pull["html_url"]},
            opened_head=(pull.get("head") or {}).get("sha", ""),
        )
        self._final(headline, text, outcome, ending)

    def suggested(
        self,
        review_url: str,
        count: int,
        patch: str,
        patch_paths: list[str],
        outcome: Outcome,
        note: str = "",
    ) -> None:
        """A fork's pull request: the change as suggestions in a review, and a patch."""
        if count:
            headline = (
                f"💡 **Claude suggested {count} change{'s' if count > 1 else ''}** in "
                f"[a review]({review_url}): commit them from the pull request's Files tab."
            )
        else:
            headline = (
                "💡 **Claude's change is in the patch below**: apply it on the pull request's "
                "branch with `git am`."
            )
        parts = []
        if patch and count:
            listed = ", ".join(f"`{p}`" for p in patch_paths[:20])
            parts.append(
                f"What suggestions cannot carry ({listed}) is in this patch; apply it on the "
                "pull request's branch with `git am`:"
            )
        parts += [patch, note, outcome.result]
        text = "\n\n".join(filter(None, parts))
        self._final(headline, text, outcome, Ending(links={"review": review_url}))

    def head_moved(self, accepted: str, now: str) -> None:
        self._final(
            "⚠️ **The pull request's head moved after this request, so nothing ran.**",
            f"It was `{accepted[:12]}` when the request came and is `{now[:12]}` now: read the "
            "new commits, then ask again.",
            None,
            Ending(conclusion="neutral"),
        )

    def pushed(
        self, branch: str, commit_url: str, files: list[str], outcome: Outcome, note: str = ""
    ) -> None:
        listing = "\n".join(f"- `{line.replace(chr(9), '` `')}`" for line in files[:50])
        headline = f"✅ **Claude pushed a commit to `{branch}`**: {commit_url}"
        text = f"{note}{outcome.result}\n\n**Files:**\n{listing}"
        self._final(headline, text, outcome, Ending(links={"commit": commit_url}))

    def review_posted(self, review_url: str, inline: int, outcome: Outcome) -> None:
        headline = (
            f"✅ **Claude reviewed this pull request** ({inline} inline comments): {review_url}"
        )
        self._final(headline, outcome.result, outcome, Ending(links={"review": review_url}))

    def no_changes(self, outcome: Outcome, note: str = "") -> None:
        self._final("💬 **No changes were needed.**", note + outcome.result, outcome)

    def answered(self, headline: str, text: str) -> None:
        self._final(headline, text, None, Ending(conclusion="neutral"))

    def stopped(self, by: str, outcome: Outcome | None = None) -> None:
        headline = f"⏹️ **Stopped by @{by}.** Nothing was pushed."
        self._final(headline, "", outcome, Ending("stopped", "cancelled"))

    def stop_refused(self, login: str, needed: str) -> None:
        """A short reply to a stop from someone who may not trigger here; the session runs on."""
        body = (
            f"🚫 @{login}, only collaborators with {needed} access can stop Claude here; "
            "the session goes on."
        )
        try:
            self.github.comment(self.request.number, body)
        except GitHubException as exc:
            log.warning("session %s: stop refusal not posted (%s)", self.session_id, exc)
        if self.check is not None:  # where the Stop button was clicked
            self.check.note(body)

    def failed(self, reason: str, outcome: Outcome | None = None) -> None:
        self._final(
            "❌ **Claude could not finish this.**", f"Reason: {reason}", outcome, FAILED_ENDING
        )

    def _final(
        self,
        headline: str,
        text: str,
        outcome: Outcome | None,
        ending: Ending = DONE_ENDING,
    ) -> None:
        self.step = DONE
        if self._writer is not None:
            self._writer.close()  # no progress edit may land after this one
        seconds = time.monotonic() - self.started
        footer = stats(outcome, seconds) if outcome else f"<sub>⏱ {took(seconds)}</sub>"
        state = ending.state
        body = self._body(headline, text, footer, "failed" if state == "stopped" else state)
        if self.history is not None:
            turns, cost = (outcome.num_turns, outcome.cost_usd) if outcome else (0, 0.0)
            self.history.finish(state, headline, ending.links, turns, cost)
        self._pace(essential=True)
        if self.comment_id:
            self._edit(body)
        elif self.in_review_thread:
            self.github.reply_review_comment(
                self.request.number, self.request.review_comment_id, body
            )
        else:
            self.github.comment(self.request.number, body)
        if self.check is not None:
            summary = "\n\n".join(filter(None, [headline, fit(text, MAX_TEXT // 2), footer]))
            conclusion = ending.conclusion or ("failure" if state == "failed" else "success")
            self.check.complete(conclusion, headline, summary, ending.opened_head)

    # -- rendering ----------------------------------------------------------------------

    def _edit(self, body: str) -> None:
        if self.in_review_thread:
            self.github.edit_review_comment(self.comment_id, body)
        else:
            self.github.edit_comment(self.comment_id, body)
        self._last_edit = time.monotonic()

    def _pace(self, essential: bool) -> None:
        if self.pacer is not None and essential:
            self.pacer.essential()

    def _step_name(self, step: int) -> str:
        return STEPS.get(self.mode, STEPS["implement"])[step]

    def _checklist(self) -> str:
        lines = []
        for i, name in enumerate(STEPS.get(self.mode, STEPS["implement"])):
            if i < self.step:
                lines.append(f"- [x] {name}")
            elif i == self.step:
                lines.append(f"- [ ] **{name}** ⏳")
            else:
                lines.append(f"- [ ] {name}")
        recent = self.actions[-SHOWN_ACTIONS:]
        if recent:
            lines.append("\n**Last actions:**\n" + "\n".join(f"- `{a}`" for a in recent))
        lines.append(f"\n<sub>⏱ {took(time.monotonic() - self.started)} so far</sub>")
        return "\n".join(lines)

    @property
    def link(self) -> str:
        """Where a later session can point to this one: its dashboard page, else this comment."""
        page = self.history.page_url if self.history is not None else ""
        return page or self.url

    def _body(self, headline: str, text: str = "", footer: str = "", state: str = "") -> str:
        parts = [headline]
        if self.continuity:
            parts.append(self.continuity)
        if state == "working":
            parts.append(self._checklist())
        if self.request.instruction:
            parts.append(f"**Request:**\n{quote(fit(self.request.instruction, 2_000))}")
        if text:
            parts.append(fit(text))
        if footer:
            parts.append(footer)
        if self.history is not None and (url := self.history.page_url):
            parts.append(f"<sub>[Session log]({url})</sub>")
        parts.append(marker(self.session_id, state))
        return redactor("\n\n".join(parts))
