"""The session's check run on its pull request: a second window on it, in the Checks tab.

A session on a pull request (implement, review, a fork's) shows a run named `Claude` on the
head it started from: queued once the worker accepted it, in progress with a Stop button once
it holds the thread, then completed as the tracking comment's final state says (success,
failure, cancelled for a stop, neutral when nothing ran). An issue's session has no pull request
until it opens one; its run is created, completed, on the opened pull request's head.

The run's `external_id` is the session id: a click on Stop or Re-run comes back to the web as a
`check_run` webhook naming it (app/triggers.py). Best-effort throughout: the tracking comment is
the session's answer, so a Checks API that refuses or is down is logged and never fails the
session; an installation that has not granted `checks` yet gets no run at all.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from githubkit.exception import GitHubException, RequestFailed
from redis import Redis
from redis.exceptions import RedisError

from jobs.common.queue import DELIVERY_TTL, STOP_ACTION, check_run_key
from jobs.common.redact import redactor
from jobs.common.request import SessionRequest
from jobs.github.client import RepoSession

log = logging.getLogger(__name__)

NAME = "Claude"
STOP_BUTTON = {
    "label": "Stop",
    "identifier": STOP_ACTION,
    "description": "Stop Claude; nothing is pushed",
}
# GitHub's limit on a summary is 65,535 characters; leave room for the headline and footer.
MAX_SUMMARY = 60_000
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def title_of(headline: str) -> str:
    """A check run's title is plain text: the headline's bold part, without its markdown."""
    found = _BOLD.search(headline)
    return (found.group(1) if found else headline).strip()[:200]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CheckRun:
    github: RepoSession
    request: SessionRequest
    session_id: str
    # Where the run's id is kept for upkeep, which ends the run of a session that died.
    redis: Redis | None = None
    run_id: int = 0
    started_at: str = field(default_factory=_now)

    @property
    def possible(self) -> bool:
        return self.github.holds("checks")

    def queue(self) -> None:
        """The worker accepted the session: the run appears, queued, on the pull request."""
        if not (self.request.pull and self.possible):
            return
        self._send(
            "queue",
            lambda: self._create(
                self.request.head_sha or self.github.pull(self.request.number)["head"]["sha"],
                status="queued",
                output=self._output("Queued", "Waiting for its turn on this pull request."),
            ),
        )

    def start(self) -> None:
        """The session holds its thread: in progress, with the Stop button."""
        self._update(
            "start",
            status="in_progress",
            output=self._output("Claude is working", "Stop ends it with nothing pushed."),
            actions=[STOP_BUTTON],
        )

    def note(self, summary: str) -> None:
        """Something the person looking at the run should know while it runs."""
        self._update("note", output=self._output("Claude is working", summary))

    def complete(self, conclusion: str, headline: str, summary: str, opened_head: str = "") -> None:
        """The session's final state; `opened_head` is the head of a pull request it opened,
        where an issue's session, which had no run until now, shows one."""
        output = self._output(title_of(headline), summary)
        if self.run_id:
            self._update("complete", conclusion=conclusion, output=output, actions=[])
        elif opened_head and self.possible:
            self._send(
                "complete",
                lambda: self._create(opened_head, conclusion=conclusion, output=output),
            )

    # -- GitHub -------------------------------------------------------------------------

    def _create(self, head_sha: str, **data: object) -> None:
        created = self.github.create_check_run(
            {
                "name": NAME,
                "head_sha": head_sha,
                "external_id": self.session_id,
                "started_at": self.started_at,
                **data,
            }
        )
        self.run_id = int(created["id"])
        if self.redis is not None:
            with contextlib.suppress(RedisError):
                self.redis.set(check_run_key(self.session_id), self.run_id, ex=DELIVERY_TTL)

    def _update(self, step: str, **data: object) -> None:
        if self.run_id:
            self._send(step, lambda: self.github.update_check_run(self.run_id, dict(data)))

    def _send(self, step: str, call: Callable[[], None]) -> None:
        try:
            call()
        except (GitHubException, KeyError, TypeError, ValueError) as exc:
            # The tracking comment carries the session; its check run is a courtesy.
            why = type(exc).__name__
            if isinstance(exc, RequestFailed):
                why = f"GitHub answered {exc.response.status_code}"
            log.warning("session %s: check run %s failed (%s)", self.session_id, step, why)

    @staticmethod
    def _output(title: str, summary: str) -> dict[str, str]:
        text = summary if len(summary) <= MAX_SUMMARY else summary[:MAX_SUMMARY] + "\n\n…"
        return {"title": redactor(title), "summary": redactor(text or title)}


def end_interrupted(
    github: RepoSession, redis: Redis, request: SessionRequest, session_id: str, headline: str
) -> None:
    """The run of a session that could not end it (its process was killed): a failure, as the
    tracking comment that upkeep ends (jobs/upkeep/interrupted.py)."""
    try:
        known = redis.get(check_run_key(session_id))
    except RedisError:
        return
    if known and github.holds("checks"):
        run = CheckRun(github, request, session_id, run_id=int(known))
        run.complete("failure", headline, headline)
