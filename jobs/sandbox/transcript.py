"""Reading Claude's `stream-json` output: what it did, and how the run ended.

The final `result` event is the verdict, and `is_error` (not `subtype`) says whether it failed:
an API failure arrives as subtype "success" with is_error true. A run that was killed emits no
result at all, which is a failure too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

_TARGET_KEYS = ("file_path", "path", "command", "pattern", "url", "description")
# The comment shows the last few; a run that loops on tool calls must not grow the worker.
MAX_ACTIONS = 500


@dataclass
class Outcome:
    is_error: bool = True
    result: str = ""
    num_turns: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0
    subtype: str = ""
    errors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # "Write CONTRIBUTING.md", "Bash: pytest"
    finished: bool = False  # a result event arrived
    last_api_error: str = ""
    structured: object = None  # the --json-schema answer, when one was asked for

    setup_failed: str = ""  # the sandbox's report when the repository's setup commands failed

    def count_from(self, usage: dict) -> None:
        """Take the cost and turns from the gateway's count (its `Usage.as_dict()`), not from
        what the sandbox printed: a steered agent can print any result line it likes."""
        if usage:
            self.cost_usd = float(usage.get("cost_usd") or 0.0)
            self.num_turns = int(usage.get("requests") or 0)

    @property
    def failure(self) -> str:
        """A short reason, for the tracking comment."""
        if self.setup_failed:
            return f"the repository's setup commands failed: {self.setup_failed}"
        if not self.finished:
            return self.last_api_error or "Claude stopped before it finished"
        if self.errors:
            return "; ".join(self.errors)
        if self.subtype and self.subtype != "success":
            return self.subtype.removeprefix("error_").replace("_", " ")
        return self.result or self.last_api_error or "Claude reported an error"


class Transcript:
    """`on_action` hears a one-line description of each tool use (the tracking comment's list);
    `on_event` every parsed event (the dashboard's stream)."""

    def __init__(
        self,
        on_action: Callable[[str], None] | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.outcome = Outcome()
        self._on_action = on_action
        self._on_event = on_event

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if self._on_event is not None:
            self._on_event(event)
        kind = event.get("type")
        if kind == "assistant":
            self._assistant(event)
        elif kind == "result":
            self._result(event)

    def _assistant(self, event: dict) -> None:
        message = event.get("message") or {}
        if not isinstance(message, dict):
            return  # not the CLI's shape: the sandbox prints what it likes
        if event.get("error") or event.get("is_api_error_message"):
            text = " ".join(
                c.get("text", "") for c in message.get("content") or [] if isinstance(c, dict)
            )
            self.outcome.last_api_error = (text or str(event.get("error")))[:500]
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                action = describe_tool_use(block)
                self.outcome.actions.append(action)
                if len(self.outcome.actions) > MAX_ACTIONS:
                    del self.outcome.actions[: MAX_ACTIONS // 2]
                if self._on_action is not None:
                    self._on_action(action)

    def _result(self, event: dict) -> None:
        o = self.outcome
        o.finished = True
        o.is_error = bool(event.get("is_error"))
        o.result = str(event.get("result") or "")
        o.num_turns = int(event.get("num_turns") or 0)
        o.cost_usd = float(event.get("total_cost_usd") or 0.0)
        o.duration_ms = int(event.get("duration_ms") or 0)
        o.subtype = str(event.get("subtype") or "")
        o.errors = [str(e) for e in event.get("errors") or []]
        o.structured = event.get("structured_output")


def describe_tool_use(block: dict) -> str:
    name = str(block.get("name", "tool"))
    params = block.get("input") or {}
    for key in _TARGET_KEYS:
        if isinstance(params, dict) and params.get(key):
            target = str(params[key]).removeprefix("/workspace/").splitlines()[0]
            return f"{name}: {target[:80]}" if key == "command" else f"{name} {target[:80]}"
    return name
