"""A local run as the terminal shows it: the tracking comment's checklist, redrawn in place.

The steps, Claude's last actions (from the CLI's stream-json, read by jobs/sandbox/transcript.py
as for the tracking comment) and the elapsed time. On a terminal rich redraws them a few times
a second; into a pipe or a file each step and action is one line as it happens, so a log keeps
them all.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from jobs.common.redact import redactor
from jobs.github.tracking import DONE, PREPARING, PUBLISHING, RUNNING, SHOWN_ACTIONS, took

STEPS = {
    PREPARING: "Preparing the workspace",
    RUNNING: "Running Claude",
    PUBLISHING: "Committing to a new branch",
}


class Progress:
    """The run's checklist for `console`; a `Watcher` of jobs/cli/local.py."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.step = 0
        self.actions: list[str] = []
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def advance(self, step: int) -> None:
        if self._live is None and self.step in STEPS:
            self._line(f"✓ {STEPS[self.step]}")
        self.step = step
        if self._live is None and step in STEPS:
            self._line(f"… {STEPS[step]}")

    def action(self, description: str) -> None:
        description = redactor(description)
        self.actions.append(description)
        del self.actions[:-SHOWN_ACTIONS]  # a loop of tool calls must not grow the screen
        if self._live is None:
            self._line(f"    {description}")

    def _line(self, text: str) -> None:
        elapsed = took(time.monotonic() - self.started)
        self.console.print(f"[dim]{elapsed:>7}[/dim] {escape(text)}", highlight=False)

    def __rich__(self) -> RenderableType:
        lines: list[RenderableType] = []
        for step, name in STEPS.items():
            if step < self.step:
                lines.append(Text(f"  ✓ {name}", style="green"))
            elif step == self.step:
                lines.append(Text(f"  ⏳ {name}", style="bold"))
            else:
                lines.append(Text(f"  ○ {name}", style="dim"))
        if self.actions and self.step < DONE:
            lines.append(Text("  Last actions:", style="dim"))
            lines += [Text(f"    {action}") for action in self.actions]
        lines.append(Text(f"  ⏱ {took(time.monotonic() - self.started)} so far", style="dim"))
        return Group(*lines)
