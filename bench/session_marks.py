"""When each step of one session happened, read from outside: the stand-ins' records and the
Docker engine's events. Nothing inside the service is instrumented.

A session's marks, in the order a session takes them, and the phases between them.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import docker

from jobs.sandbox.container import POOL_ROLE, ROLE_LABEL
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
    comment_id: int  # the triggering comment
    delivered: float
    accepted: float


@dataclass(frozen=True)
class ContainerEvent:
    at: float
    action: str  # as the engine says it: "create", "exec_start: <command>", "die", …
    container: str
    role: str  # its claudecluster.role label: "sandbox" (a fresh one) or "pool" (a warm one)

    @property
    def kind(self) -> str:
        return self.action.split(":")[0]


class DockerEvents:
    """The engine's container events of this service's sandboxes (label claudecluster.role), as
    they come. Other services on the same engine (tests, other benches) run sandboxes too: ours
    are those that bind-mount a directory under `root`, where the service keeps its workspaces.
    That holds for a container a session creates and for one a warm pool started before."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events: list[ContainerEvent] = []
        self._ours: set[str] = set()
        self._lock = threading.Lock()
        self._client = docker.from_env()
        self._stream = self._client.events(
            decode=True, filters={"type": "container", "label": "claudecluster.role"}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream is closed at the end
            for event in self._stream:
                if event["Action"] == "create" and self._mounts_ours(event["id"]):
                    self._ours.add(event["id"])
                if event["id"] in self._ours:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    seen = ContainerEvent(
                        event["timeNano"] / 1e9,
                        event["Action"],
                        event["id"],
                        attributes.get(ROLE_LABEL, ""),
                    )
                    with self._lock:
                        self.events.append(seen)

    def _mounts_ours(self, container_id: str) -> bool:
        try:
            mounts = self._client.api.inspect_container(container_id)["Mounts"]
        except docker.errors.NotFound:
            return False
        return any(Path(m.get("Source", "/")).is_relative_to(self.root) for m in mounts)

    def close(self) -> None:
        self._stream.close()

    def after(self, since: float) -> list[ContainerEvent]:
        """Our containers' events from `since` on."""
        with self._lock:
            return [e for e in self.events if e.at >= since]


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
        self._container_marks(marks)
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

    def _container_marks(self, marks: dict[str, float]) -> None:
        """Created, started and done: a container the session creates and starts (its CLI the
        container's command), or a warm one a pool started before, which the session takes over
        by an exec (the entrypoint and the CLI): then created and started are that exec's start.
        The pool's refill (a new warm container's create and start) is no step of the session."""
        events = self.docker.after(marks["delivered"])
        fresh = [e for e in events if e.role != POOL_ROLE]
        created = [e for e in fresh if e.kind == "create"]
        if created:
            ours = created[0]
            marks["created"] = ours.at
            marks["started"] = _first(
                e.at for e in fresh if e.container == ours.container and e.kind == "start"
            )
            done = ("die",)
        else:
            claims = [e for e in events if e.role == POOL_ROLE and e.kind == "exec_start"]
            ours = min(claims, key=lambda e: e.at, default=None)
            if ours is None:
                raise LookupError("the session's sandbox was not seen")
            marks["created"] = marks["started"] = ours.at
            done = ("exec_die", "die")
        marks["CLI done"] = _first(
            e.at
            for e in events
            if e.container == ours.container and e.kind in done and e.at > marks["started"]
        )

    def trail(self, session: Session, marks: dict[str, float]) -> list[str]:
        """What the session was seen doing, each at its offset from the delivery: every request
        to the stand-ins and every Docker event, in order; where the phases' time went."""
        began, ended = marks["delivered"], marks["final comment"]
        seen = [(r.at, f"github {r.method} {r.path} {r.status}") for r in self.github.requests]
        seen += [(r.received_at, f"model {r.kind} request") for r in self.model.requests]
        seen += [(r.answered_at, "model answered") for r in self.model.main_requests()]
        seen += [(e.at, f"docker {e.role} {e.action[:60]}") for e in self.docker.after(began)]
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
