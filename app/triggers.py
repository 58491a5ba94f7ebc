"""Which deliveries start a session: one small handler per (event, action).

A handler reads the payload and returns either `Start` (the plain values of a session) or `Ignore`
(with the reason, echoed to GitHub's delivery log so an operator can see why nothing happened).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from app.payload import field
from jobs.request import SessionRequest

TRIGGER = "/claude"


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Start:
    request: SessionRequest


Decision = Ignore | Start
Handler = Callable[[dict, str], Decision]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(event: str, action: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[(event, action)] = handler
        return handler

    return register


def decide(event: str, payload: dict, delivery_id: str) -> Decision:
    action = payload.get("action") if isinstance(payload, dict) else None
    handler = HANDLERS.get((event, action if isinstance(action, str) else ""))
    if handler is None:
        return Ignore(f"{event}.{action} is not handled" if action else f"{event} is not handled")
    return handler(payload, delivery_id)


_COMMAND = re.compile(rf"^[ \t]*{re.escape(TRIGGER)}(?=\s|$)(.*)", re.MULTILINE | re.DOTALL)


def instruction_from(body: str) -> str | None:
    """The text after the first line that starts with the trigger, or None when there is none.

    The rest of that line and every line after it are the instruction, so a multi-line request
    reaches Claude whole.
    """
    match = _COMMAND.search(body)
    return match.group(1).strip() if match else None


def is_bot(user: dict) -> bool:
    # `type` is authoritative; the `[bot]` suffix covers payloads that omit it.
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


@handles("issue_comment", "created")
def issue_comment_created(payload: dict, delivery_id: str) -> Decision:
    body = field(payload, "comment", "body", optional=True) or ""
    user = field(payload, "comment", "user", kind=dict)
    if field(payload, "issue", "pull_request", kind=dict, optional=True) is not None:
        return Ignore("comments on pull requests are not handled yet")
    if is_bot(user):
        return Ignore("comments by bots never trigger")
    instruction = instruction_from(body)
    if instruction is None:
        return Ignore(f"no {TRIGGER} command")
    return Start(
        SessionRequest(
            delivery_id=delivery_id,
            installation_id=field(payload, "installation", "id", kind=int),
            repo=field(payload, "repository", "full_name"),
            number=field(payload, "issue", "number", kind=int),
            comment_id=field(payload, "comment", "id", kind=int),
            requester=field(payload, "comment", "user", "login"),
            requester_id=field(payload, "comment", "user", "id", kind=int),
            instruction=instruction,
        )
    )
