"""The tracking comment's progress edits, written off the session's path.

A step change waits for the installation's next write turn (jobs/github/pacing.py keeps a
second between two writes); made on the session's path, that wait held the container's start
and the final answer back by up to a second each. Here one thread per comment makes the edits:
a step is shown once it has lasted STEP_SETTLE; the body is rendered when the turn comes, so it
shows the session as it is then, and an edit overtaken by the next is never made; `close`,
before the final edit, drops what is pending and waits for an edit in flight, so no progress
edit ever lands after the final one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from githubkit.exception import GitHubException

from jobs.github.pacing import Pacer

log = logging.getLogger(__name__)

CLOSE_WAIT = 30.0  # seconds `close` waits for an edit in flight (a GitHub request's own bound)
# A step is shown once it has lasted this long: the last one (pushing, posting the review) is
# over within it as a rule, and an edit made for it would hold the final one for a turn.
STEP_SETTLE = 1.0


class ProgressWriter:
    def __init__(
        self,
        edit: Callable[[], None],
        pacer: Pacer | None,
        name: str,
        settle: float = STEP_SETTLE,
    ) -> None:
        self._edit = edit  # renders the comment as it is now and writes it
        self._pacer = pacer
        self._name = name
        self._settle = settle
        self._wanted = threading.Condition()
        self._pending: str = ""  # "": nothing; "step": must be shown; "action": if a turn is free
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        """A new step: shown once the installation's turn comes."""
        self._want("step")

    def action(self) -> None:
        """A new action of Claude's: shown only if a turn is free then (progress is optional)."""
        self._want("action")

    def close(self) -> None:
        with self._wanted:
            self._closed.set()
            self._pending = ""
            self._wanted.notify()
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT)

    def _want(self, kind: str) -> None:
        with self._wanted:
            if self._closed.is_set():
                return
            if self._pending != "step":  # a step's edit stays one that must be made
                self._pending = kind
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wanted.notify()

    def _run(self) -> None:
        while kind := self._next():
            if not self._turn(kind):
                continue
            with self._wanted:
                if self._closed.is_set():
                    return
                self._pending = ""  # what comes from now on is in this edit, or asks again
            try:
                self._edit()
            except GitHubException as exc:
                log.warning("%s: progress edit failed (%s)", self._name, type(exc).__name__)

    def _next(self) -> str:
        with self._wanted:
            while not self._pending and not self._closed.is_set():
                self._wanted.wait()
            return "" if self._closed.is_set() else self._pending

    def _turn(self, kind: str) -> bool:
        """Whether to edit now: a step settles, then waits for its turn; an action takes a
        turn only if one is free."""
        if kind == "step":
            if self._closed.wait(self._settle):
                return False  # the final edit came first
            if self._pacer is None:
                return True
            return self._pacer.essential(wait=self._closed.wait)  # False: closed meanwhile
        if self._pacer is None:
            return True
        if self._pacer.optional():
            return True
        with self._wanted:
            if self._pending == "action":
                self._pending = ""  # the budget is tight: the final edit matters more
        return False
