"""When each step of one session happened, read from outside: the stand-ins' records and the
Docker engine's events. Nothing inside the service is instrumented.

A session's marks, in the order a session takes them, and the phases between them.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import docker

from jobs.sandbox.container import LABEL
from tests.standins.anthropic import AnthropicStandIn
from tests.standins.github import GitHubStandIn

# (mark, what it is seen as); a phase is named after the mark that ends it.
MARKS = [
    ("delivered", "the signed delivery is POSTed to /webhooks"),
    ("accepted", "its 202 is read"),
    ("token", "the installation token is minted (stand-in)"),
    ("eyes", "the 👀 reaction is posted (stand-in)"),
    ("fetched", "the last git request before the container (stand-in's upload-pack)"),
    ("created", "the sandbox container is created (Docker event)"),
    ("started", "the sandbox container is started (Docker event)"),
    ("first request", "the CLI's first model request (model stand-in)"),
    ("last answer", "the model's last answer is sent (model stand-in)"),
    ("CLI done", "the sandbox container dies: the CLI exited (Docker event)"),
    ("pushed", "the push is served (stand-in's receive-pack)"),
    ("pull request", "the pull request is opened (stand-in)"),
    ("final comment", "the tracking comment is edited into its final state (stand-in)"),
]
PHASES = [name for name, _ in MARKS[1:]]
# The CLI's own time: from its first model request to its exit.
CLI_FROM, CLI_TO = "first request", "CLI done"


@dataclass(frozen=True)
class Session:
    id: str  # the service's session id, which labels its container
    comment_id: int  # the triggering comment
    delivered: float
    accepted: float


class DockerEvents:
    """The engine's container events of sandboxes (label claudecluster.role), as they come."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._stream = docker.from_env().events(
            decode=True, filters={"type": "container", "label": "claudecluster.role"}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream is closed at the end
            for event in self._stream:
                with self._lock:
                    self.events.append(event)

    def close(self) -> None:
        self._stream.close()

    def of(self, session_id: str) -> list[tuple[float, str]]:
        """(time, action) of the events of the session's containers: other services on the same
        engine (tests, other benches) run sandboxes too."""
        with self._lock:
            return [
                (e["timeNano"] / 1e9, e["Action"])
                for e in self.events
                if e["Actor"]["Attributes"].get(LABEL) == session_id
            ]


@dataclass
class Observed:
    github: GitHubStandIn
    model: AnthropicStandIn
    docker: DockerEvents

    def read(self, session: Session) -> dict[str, float]:
        """Every mark of the session (the only one this service runs at the time)."""
        delivered, accepted = session.delivered, session.accepted
        requests = [r for r in self.github.requests if r.at >= delivered]
        marks = {"delivered": delivered, "accepted": accepted}
        marks["token"] = _first(r.at for r in requests if r.path.endswith("/access_tokens"))
        reactions = f"/issues/comments/{session.comment_id}/reactions"
        marks["eyes"] = _first(r.at for r in requests if r.path.endswith(reactions))
        events = self.docker.of(session.id)
        marks["created"] = _first(t for t, action in events if action == "create")
        marks["started"] = _first(t for t, action in events if action == "start")
        marks["CLI done"] = _first(t for t, action in events if action == "die")
        git = [r.at for r in requests if "/git-" in r.path or "/info/refs" in r.path]
        marks["fetched"] = _last(t for t in git if t <= marks["created"])
        main = [r for r in self.model.main_requests() if r.received_at >= delivered]
        marks["first request"] = _first(r.received_at for r in main)
        marks["last answer"] = _last(r.answered_at for r in main)
        pushes = [r.at for r in requests if r.method == "POST" and "/git-receive-pack" in r.path]
        marks["pushed"] = _first(pushes)
        pulls = [r.at for r in requests if r.method == "POST" and r.path.endswith("/pulls")]
        marks["pull request"] = _first(pulls)
        marks["final comment"] = _first(
            r.at
            for r in requests
            if r.method == "PATCH" and "state=done" in str((r.json or {}).get("body", ""))
        )
        return {name: marks[name] for name, _ in MARKS}

    def trail(self, session: Session, marks: dict[str, float]) -> list[str]:
        """What the session was seen doing, each at its offset from the delivery: every request
        to the stand-ins and every Docker event, in order; where the phases' time went."""
        began, ended = marks["delivered"], marks["final comment"]
        seen = [(r.at, f"github {r.method} {r.path} {r.status}") for r in self.github.requests]
        seen += [(r.received_at, f"model {r.kind} request") for r in self.model.requests]
        seen += [(r.answered_at, "model answered") for r in self.model.main_requests()]
        seen += [(t, f"docker {action}") for t, action in self.docker.of(session.id)]
        return [f"{t - began:7.3f} {what}" for t, what in sorted(seen) if began <= t <= ended]


def _first(times) -> float:
    found = sorted(times)
    if not found:
        raise LookupError("a step of the session was not seen")
    return found[0]


def _last(times) -> float:
    return -_first(-t for t in times)


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds from each mark to the next, named after the later one."""
    names = [name for name, _ in MARKS]
    steps = zip(names, names[1:], strict=False)
    return {later: marks[later] - marks[earlier] for earlier, later in steps}
