"""Each session's record and event stream in Redis: what the dashboard shows.

The worker writes: the tracking comment (jobs/github/tracking.py) reports each step and the end
to `SessionHistory`, and the sandbox's transcript hands it each event of the CLI's stream-json,
which `SessionHistory.cli_event` turns into the dashboard's events (messages, tool calls with
their inputs, file edits as diffs, Bash commands and their output), each bounded and redacted as
comments are. The web reads (app/dashboard.py, app/live.py), so neither imports the other.

A record is a hash; the events a Redis Stream capped at MAX_EVENTS entries, so a browser that
reconnects resumes after the last id it saw. Both expire SESSION_HISTORY_DAYS after the
session's last write; the index (a sorted set by start time) drops them past that age.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError

from jobs.common.redact import redactor
from jobs.common.request import SessionRequest
from jobs.common.settings import CommonSettings

log = logging.getLogger(__name__)

INDEX = "claudecluster:sessions"
MAX_EVENTS = 5_000  # per session: a loop of tool calls must not grow Redis without end
TEXT_LIMIT = 4_000  # a message, a tool's input, a command's output
DIFF_LIMIT = 16_000
LIVE_STATES = ("waiting", "running")
STATES = (*LIVE_STATES, "done", "failed", "stopped")
_EDIT_TOOLS = ("Edit", "MultiEdit", "Write", "NotebookEdit")


def record_key(session_id: str) -> str:
    return f"claudecluster:session:{session_id}"


def events_key(session_id: str) -> str:
    return f"claudecluster:events:{session_id}"


def retention(settings: CommonSettings) -> int:
    return int(settings.session_history_days * 86_400)


def page_url(settings: CommonSettings, session_id: str) -> str | None:
    """The session's dashboard page, when PUBLIC_URL says where people reach the service."""
    return f"{settings.public_url}/sessions/{session_id}" if settings.public_url else None


def bounded(text: object, limit: int = TEXT_LIMIT) -> str:
    """Redacted, and cut in the middle past `limit` characters."""
    text = redactor(text)
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}\n… ({len(text) - limit:,} characters cut) …\n{text[-half:]}"
    return text


def edit_diff(name: str, params: dict) -> str:
    """A file edit as a unified diff; a Write shows the new content as added lines."""
    path = str(params.get("file_path") or params.get("notebook_path") or "?")
    path = path.removeprefix("/workspace/")
    if name == "MultiEdit":
        edits = params.get("edits")
        edits = [e for e in edits if isinstance(e, dict)] if isinstance(edits, list) else []
        pairs = [(e.get("old_string", ""), e.get("new_string", "")) for e in edits]
    elif name == "Write":
        pairs = [("", params.get("content", ""))]
    elif name == "NotebookEdit":
        pairs = [("", params.get("new_source", ""))]
    else:
        pairs = [(params.get("old_string", ""), params.get("new_string", ""))]
    lines: list[str] = []
    for old, new in pairs:
        lines += difflib.unified_diff(
            str(old).splitlines(), str(new).splitlines(), f"a/{path}", f"b/{path}", lineterm=""
        )
    return bounded("\n".join(lines), DIFF_LIMIT)


def result_text(content: object) -> str:
    if isinstance(content, list):
        return "\n".join(
            str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("text")
        )
    return str(content or "")


def entry(kind: str, **data: object) -> str:
    return json.dumps({"kind": kind, "at": time.time(), **data}, ensure_ascii=False)


def mark_interrupted(redis: Redis, session_id: str, why: str) -> None:
    """A session that could not end itself (its worker died, it timed out in RQ): its record
    ends as failed, like its tracking comment (jobs/upkeep/interrupted.py). The keys keep
    their expiry."""
    key = record_key(session_id)
    state = redis.hget(key, "state")
    if state is None or state.decode() not in LIVE_STATES:
        return
    outcome = bounded(why, 1_000)
    # The end event before the state: a stream reader that sees the state ended and nothing
    # new in the stream closes, so the event must already be there (app/live.py).
    end = entry("end", state="failed", outcome=outcome, links={})
    redis.xadd(events_key(session_id), {"data": end}, maxlen=MAX_EVENTS, approximate=True)
    redis.hset(key, mapping={"state": "failed", "ended": str(time.time()), "outcome": outcome})


@dataclass
class SessionHistory:
    """The worker's writer for one session. A Redis failure is logged, never raised: the
    dashboard is a window on the session, not a step of it."""

    redis: Redis
    session_id: str
    settings: CommonSettings
    opened: bool = False
    _tools: dict[str, str] = field(default_factory=dict)  # tool_use id -> tool name
    _message: str = ""  # the id of the last assistant message, to count turns

    @property
    def page_url(self) -> str | None:
        return page_url(self.settings, self.session_id)

    def open(
        self, request: SessionRequest, mode: str, comment_url: str, steps: Sequence[str] = ()
    ) -> None:
        """The record, once the session has answered on its thread; `steps` its checklist."""
        self.opened = True
        now = time.time()
        self._write(
            {
                "id": self.session_id,
                "state": "running",
                "repo": request.repo,
                "installation_id": request.installation_id,
                "number": request.number,
                "pull": int(request.pull),
                "thread_url": comment_url.split("#", 1)[0],
                "comment_url": comment_url,
                "requester": request.requester,
                "mode": mode,
                "instruction": bounded(request.instruction, 300),
                "started": now,
                "steps": json.dumps(list(steps)),
                "turns": 0,
                "cost_usd": 0.0,
            },
            index=now,
        )

    def state(self, state: str) -> None:
        if self.opened:
            self._write({"state": state})
            self.event("state", state=state)

    def step(self, index: int, name: str) -> None:
        if self.opened:
            self._write({"step": index, "step_name": name})
            self.event("step", step=index, name=name)

    def finish(
        self, state: str, headline: str, links: dict, turns: int = 0, cost: float = 0.0
    ) -> None:
        """The end: its state, the comment's headline, links, and the gateway's count."""
        if not self.opened:
            return
        now = time.time()
        fields: dict = {"state": state, "ended": now, "outcome": bounded(headline, 1_000)}
        shown = {k: bounded(v, 500) for k, v in links.items() if v}
        fields["links"] = json.dumps(shown)
        if turns or cost:
            fields.update(turns=turns, cost_usd=cost)
        # The event before the record, as in mark_interrupted: a reader must never see the
        # state ended before the end event is in the stream.
        self.event("end", state=state, outcome=fields["outcome"], links=shown)
        self._write(fields)

    def event(self, kind: str, **data: object) -> None:
        if not self.opened:
            return
        key, ttl = events_key(self.session_id), retention(self.settings)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(key, {"data": entry(kind, **data)}, maxlen=MAX_EVENTS, approximate=True)
            pipe.expire(key, ttl)
            pipe.execute()
        except RedisError as exc:
            log.warning("session %s: event not recorded (%s)", self.session_id, type(exc).__name__)

    # -- the CLI's stream-json ----------------------------------------------------------

    def cli_event(self, event: dict) -> None:
        """One parsed line of the CLI's output, as the dashboard's events."""
        kind, message = event.get("type"), event.get("message")
        if not isinstance(message, dict):
            return  # the sandbox prints what it likes: only well-formed messages are shown
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        if kind == "assistant":
            self._count_turn(str(message.get("id") or ""))
            for block in blocks:
                self._assistant_block(block)
        elif kind == "user":
            for block in blocks:
                if block.get("type") == "tool_result":
                    self._tool_result(block)

    def _count_turn(self, message_id: str) -> None:
        # The CLI prints one assistant event per content block, all with the message's id.
        if message_id and message_id != self._message and self.opened:
            self._message = message_id
            # A lost count is harmless: the final count comes from the gateway.
            with contextlib.suppress(RedisError):
                self.redis.hincrby(record_key(self.session_id), "turns", 1)

    def _assistant_block(self, block: dict) -> None:
        if block.get("type") == "text" and str(block.get("text", "")).strip():
            self.event("message", text=bounded(block["text"]))
            return
        if block.get("type") != "tool_use":
            return
        name, params = str(block.get("name", "tool")), block.get("input") or {}
        if len(self._tools) > 1_000:
            self._tools.clear()
        self._tools[str(block.get("id", ""))] = name
        if not isinstance(params, dict):
            params = {"input": params}
        if name == "Bash":
            self.event("bash", command=bounded(params.get("command", "")))
        elif name in _EDIT_TOOLS:
            path = str(params.get("file_path") or params.get("notebook_path") or "")
            shown = bounded(path.removeprefix("/workspace/"), 300)
            self.event("edit", tool=name, path=shown, diff=edit_diff(name, params))
        else:
            shown = json.dumps(params, ensure_ascii=False, indent=1)
            self.event("tool", tool=name, input=bounded(shown))

    def _tool_result(self, block: dict) -> None:
        tool = self._tools.get(str(block.get("tool_use_id", "")), "tool")
        self.event(
            "output",
            tool=tool,
            error=bool(block.get("is_error")),
            text=bounded(result_text(block.get("content"))),
        )

    def _write(self, fields: dict, index: float | None = None) -> None:
        key, ttl = record_key(self.session_id), retention(self.settings)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(key, ttl)
            if index is not None:
                pipe.zadd(INDEX, {self.session_id: index})
                pipe.zremrangebyscore(INDEX, 0, time.time() - ttl)
            pipe.execute()
        except RedisError as exc:
            log.warning("session %s: record not written (%s)", self.session_id, type(exc).__name__)


# -- the reading side (the web) ---------------------------------------------------------


@dataclass(frozen=True)
class SessionRecord:
    id: str
    state: str
    repo: str
    installation_id: int
    number: int
    pull: bool
    thread_url: str
    comment_url: str
    requester: str
    mode: str
    instruction: str
    started: float
    ended: float | None
    step: int
    step_name: str
    steps: list
    turns: int
    cost_usd: float
    outcome: str
    links: dict

    @classmethod
    def from_hash(cls, raw: dict) -> SessionRecord | None:
        values = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            return cls(
                id=values["id"],
                state=values.get("state", "running"),
                repo=values["repo"],
                installation_id=int(values.get("installation_id") or 0),
                number=int(values.get("number") or 0),
                pull=values.get("pull") == "1",
                thread_url=values.get("thread_url", ""),
                comment_url=values.get("comment_url", ""),
                requester=values.get("requester", ""),
                mode=values.get("mode", ""),
                instruction=values.get("instruction", ""),
                started=float(values.get("started") or 0),
                ended=float(values["ended"]) if values.get("ended") else None,
                step=int(values.get("step") or 0),
                step_name=values.get("step_name", ""),
                steps=json.loads(values.get("steps") or "[]"),
                turns=int(values.get("turns") or 0),
                cost_usd=float(values.get("cost_usd") or 0),
                outcome=values.get("outcome", ""),
                links=json.loads(values.get("links") or "{}"),
            )
        except (KeyError, ValueError):
            return None  # a record this release cannot read: not shown

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def seconds(self) -> float:
        return max(0.0, (self.ended or time.time()) - self.started)

    @property
    def thread(self) -> str:
        return f"{'PR' if self.pull else 'issue'} #{self.number}"


def load_record(redis: Redis, session_id: str) -> SessionRecord | None:
    raw = redis.hgetall(record_key(session_id))
    return SessionRecord.from_hash(raw) if raw else None


def recent_records(redis: Redis, settings: CommonSettings) -> list[SessionRecord]:
    """Every session still kept, newest first."""
    redis.zremrangebyscore(INDEX, 0, time.time() - retention(settings))
    ids = [i.decode() for i in redis.zrevrange(INDEX, 0, -1)]
    pipe = redis.pipeline(transaction=False)
    for session_id in ids:
        pipe.hgetall(record_key(session_id))
    found = [SessionRecord.from_hash(raw) for raw in pipe.execute() if raw]
    return [r for r in found if r is not None]


def parse_entry(entry_id: bytes | str, fields: dict) -> tuple[str, dict]:
    """(stream id, event) of one stream entry."""
    raw = fields.get(b"data") or fields.get("data") or b"{}"
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return ident, json.loads(raw)
