"""Which deliveries start a session: one small handler per (event, action).

A handler reads the payload and returns either `Start` (the plain values of a session) or `Ignore`
(with the reason, echoed to GitHub's delivery log so an operator can see why nothing happened).
What needs the repository's own config (its label→mode map, a custom trigger, who may trigger)
is decided by the worker, which can read `.github/claude.yml`; the web process never calls GitHub.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from app.payload import field
from jobs.common.continuity import Thread
from jobs.common.queue import STOP_ACTION, is_session_id
from jobs.common.repo_hints import DEFAULT_TRIGGER, RepoHints
from jobs.common.request import CONFIG_PATH, MARKER, Mode, SessionRequest, Trigger

TRIGGER = DEFAULT_TRIGGER


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Start:
    request: SessionRequest


@dataclass(frozen=True)
class Prime:
    """Read these repositories' `.github/claude.yml` now: the App was just installed on them."""

    requests: tuple[SessionRequest, ...]


@dataclass(frozen=True)
class Clicked:
    """A person clicked a button of a session's check run: Stop, or Re-run after it ended.

    The run names its session (`external_id`); what that session was asked is in Redis, so the
    web reads it there (app/enqueue.py `queued_request`) and `clicked_request` makes the stop or
    the second run of it."""

    session_id: str
    rerun: bool
    delivery_id: str
    repo: str
    login: str
    login_id: int
    check_run_id: int


@dataclass(frozen=True)
class Forget:
    """The issue or pull request closed: its kept conversation goes (jobs/common/continuity.py).
    A reopened thread starts fresh."""

    thread: Thread


Decision = Ignore | Start | Prime | Clicked | Forget
Handler = Callable[[dict, str, RepoHints], Decision]
HANDLERS: dict[tuple[str, str], Handler] = {}
# The handlers that read the repository's `RepoHints`: only for these does the web ask Redis.
HINTED: set[tuple[str, str]] = set()


def handles(event: str, action: str, hints: bool = False) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[(event, action)] = handler
        if hints:
            HINTED.add((event, action))
        return handler

    return register


def _key(event: str, payload: dict) -> tuple[str, str]:
    action = payload.get("action") if isinstance(payload, dict) else None
    return event, action if isinstance(action, str) else ""


def handler_for(event: str, payload: dict) -> Handler | None:
    return HANDLERS.get(_key(event, payload))


def reads_hints(event: str, payload: dict) -> bool:
    return _key(event, payload) in HINTED


def decide(event: str, payload: dict, delivery_id: str, hints: RepoHints | None = None) -> Decision:
    handler = handler_for(event, payload)
    if handler is None:
        action = payload.get("action") if isinstance(payload, dict) else None
        return Ignore(f"{event}.{action} is not handled" if action else f"{event} is not handled")
    return handler(payload, delivery_id, hints or RepoHints())


@lru_cache(maxsize=256)
def _command(phrase: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*{re.escape(phrase)}(?=\s|$)(.*)", re.MULTILINE | re.DOTALL)


def instruction_from(body: str, phrase: str = TRIGGER) -> str | None:
    """The text after the first line that starts with the trigger, or None when there is none.

    The rest of that line and every line after it are the instruction, so a multi-line request
    reaches Claude whole.
    """
    match = _command(phrase).search(body)
    return match.group(1).strip() if match else None


# One-word requests that are real work, not mistyped commands.
KNOWN_VERBS = frozenset(
    {
        "fix",
        "refactor",
        "test",
        "document",
        "lint",
        "format",
        "implement",
        "rebase",
        "continue",
        "retry",
        "simplify",
        "optimize",
    }
)


# `fix ci`, `fix-ci` or `Fix CI:` and what follows it; not `fix circular imports`.
_FIX_CI = re.compile(r"\s*fix[ \t-]+ci(?![\w-]):?", re.IGNORECASE)


def command_from(instruction: str) -> tuple[str, str]:
    """(mode, instruction): `help`, `stop`, `review [focus]` and `fix ci [more]` are commands;
    the rest is work."""
    first, _, rest = instruction.partition("\n")[0].strip().partition(" ")
    word = first.lower()
    if not instruction or word in ("help", "-h", "--help", "?"):
        return Mode.HELP, ""
    if word == "stop" and not rest.strip():
        return Mode.STOP, ""
    if word == "review":
        focus = instruction.strip()[len(first) :].strip()
        return Mode.REVIEW, focus
    if fixing_ci := _FIX_CI.match(instruction):
        return Mode.FIX_CI, instruction[fixing_ci.end() :].strip()
    if first.startswith("-") or (
        not rest and "\n" not in instruction.strip() and word.isalpha() and word not in KNOWN_VERBS
    ):
        # A lone word or a flag is taken for a command we do not know: answer with the help.
        return Mode.HELP, instruction
    return Mode.IMPLEMENT, instruction


def fresh_from(instruction: str) -> tuple[bool, str]:
    """`fresh <request>`: the request, to be worked on without the thread's earlier conversation.

    A lone `fresh` is a command missing its request: it is answered with the help."""
    first = instruction.partition("\n")[0].strip().partition(" ")[0]
    if first.lower() != "fresh":
        return False, instruction
    rest = instruction.strip()[len(first) :].strip()
    return True, rest or "fresh"


def is_bot(user: dict) -> bool:
    # `type` is authoritative; the `[bot]` suffix covers payloads that omit it.
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


def _request(payload: dict, delivery_id: str, who: tuple[str, ...], **values) -> SessionRequest:
    return SessionRequest(
        delivery_id=delivery_id,
        installation_id=field(payload, "installation", "id", kind=int),
        repo=field(payload, "repository", "full_name"),
        requester=field(payload, *who, "login"),
        requester_id=field(payload, *who, "id", kind=int),
        **values,
    )


def _commented(
    payload: dict, delivery_id: str, hints: RepoHints, comment: str, **values
) -> Decision:
    body = field(payload, comment, "body", optional=True) or ""
    user = field(payload, comment, "user", kind=dict)
    if MARKER in body:
        return Ignore("the bot's own comments never trigger")
    login = user.get("login")
    if is_bot(user) and not (isinstance(login, str) and login in hints.bots):
        return Ignore("comments by bots never trigger")
    instruction = instruction_from(body, hints.trigger)
    if instruction is None:
        return Ignore(f"no {hints.trigger} command")
    fresh, instruction = fresh_from(instruction)
    mode, instruction = command_from(instruction)
    when = field(payload, comment, "created_at", optional=True) or field(
        payload, comment, "submitted_at", optional=True
    )
    own_id = field(payload, comment, "id", kind=int)
    content = f"{values.get('trigger', Trigger.COMMENT)}:{values.get('number')}:{own_id}"
    return Start(
        _request(
            payload,
            delivery_id,
            (comment, "user"),
            instruction=instruction,
            mode=mode,
            triggered_at=when or "",
            phrase=hints.trigger,
            content_id=content,
            fresh=fresh,
            **values,
        )
    )


@handles("issue_comment", "created", hints=True)
def issue_comment_created(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    pull = field(payload, "issue", "pull_request", kind=dict, optional=True) is not None
    return _commented(
        payload,
        delivery_id,
        hints,
        "comment",
        number=field(payload, "issue", "number", kind=int),
        comment_id=field(payload, "comment", "id", kind=int),
        pull=pull,
    )


@handles("pull_request_review_comment", "created", hints=True)
def review_comment_created(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _commented(
        payload,
        delivery_id,
        hints,
        "comment",
        number=field(payload, "pull_request", "number", kind=int),
        review_comment_id=field(payload, "comment", "id", kind=int),
        pull=True,
        trigger=Trigger.REVIEW_COMMENT,
        head_sha=field(payload, "pull_request", "head", "sha", optional=True) or "",
    )


@handles("pull_request_review", "submitted", hints=True)
def review_submitted(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _commented(
        payload,
        delivery_id,
        hints,
        "review",
        number=field(payload, "pull_request", "number", kind=int),
        review_id=field(payload, "review", "id", kind=int),
        pull=True,
        trigger=Trigger.REVIEW,
        head_sha=field(payload, "pull_request", "head", "sha", optional=True) or "",
    )


def _labelled(payload: dict, delivery_id: str, thread: str, pull: bool) -> Decision:
    if is_bot(field(payload, "sender", kind=dict)):
        return Ignore("bots never trigger")
    # Which labels mean a run is the repository's choice: the worker checks its config.
    # The label's own time (the thread's update stamp, which labelling sets): comments after it
    # are not material of this session, as for a comment trigger.
    when = field(payload, thread, "updated_at", optional=True) or ""
    number = field(payload, thread, "number", kind=int)
    # A label event has no id of its own: the thread, the label and the time it was put on.
    label_id = field(payload, "label", "id", kind=int, optional=True)
    name = field(payload, "label", "name")
    content = f"label:{number}:{label_id}:{name}:{when}"
    return Start(
        _request(
            payload,
            delivery_id,
            ("sender",),
            instruction="",
            number=number,
            pull=pull,
            trigger=Trigger.LABEL,
            label=name,
            triggered_at=when,
            content_id=content,
        )
    )


@handles("pull_request", "labeled")
def pull_request_labeled(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _labelled(payload, delivery_id, "pull_request", pull=True)


@handles("issues", "labeled")
def issue_labeled(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _labelled(payload, delivery_id, "issue", pull=False)


def _closed(payload: dict, kind: str) -> Decision:
    return Forget(
        Thread(
            field(payload, "installation", "id", kind=int),
            field(payload, "repository", "id", kind=int),
            field(payload, kind, "number", kind=int),
        )
    )


@handles("pull_request", "closed")
def pull_request_closed(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _closed(payload, "pull_request")


@handles("issues", "closed")
def issue_closed(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _closed(payload, "issue")


@handles("pull_request", "synchronize")
def pull_request_pushed(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    labels = field(payload, "pull_request", "labels", kind=list, optional=True) or []
    if not labels:
        return Ignore("new commits on a pull request without labels")
    if is_bot(field(payload, "sender", kind=dict)):
        return Ignore("pushes by bots never trigger (our own commits included)")
    names = sorted(str(label.get("name")) for label in labels if isinstance(label, dict))
    when = field(payload, "pull_request", "updated_at", optional=True) or ""
    # The pushed head names the push: the same sha again is the same push.
    number = field(payload, "pull_request", "number", kind=int)
    head = field(payload, "after", optional=True) or field(
        payload, "pull_request", "head", "sha", optional=True
    )
    return Start(
        _request(
            payload,
            delivery_id,
            ("sender",),
            instruction="",
            number=number,
            pull=True,
            trigger=Trigger.PUSH,
            label=",".join(names),
            triggered_at=when,
            content_id=f"push:{number}:{head}" if head else "",
        )
    )


@handles("push", "")
def pushed(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    """A push that changes the config on the default branch refreshes what the web knows."""
    default = field(payload, "repository", "default_branch", optional=True)
    if field(payload, "ref") != f"refs/heads/{default}":
        return Ignore("push to a branch other than the default")
    touched = {
        path
        for commit in field(payload, "commits", kind=list, optional=True) or []
        if isinstance(commit, dict)
        for key in ("added", "modified", "removed")
        for path in (commit.get(key) if isinstance(commit.get(key), list) else [])
        if isinstance(path, str)
    }
    if CONFIG_PATH not in touched:
        return Ignore(f"push does not change {CONFIG_PATH}")
    return Start(
        _request(
            payload,
            delivery_id,
            ("sender",),
            instruction="",
            number=0,
            mode=Mode.REFRESH,
            trigger=Trigger.CONFIG,
        )
    )


# A new installation's repositories learn their trigger phrase before anyone comments; past
# this many in one delivery, the rest learn it from their first config push or session.
PRIMED_AT_MOST = 100


def _primed(payload: dict, delivery_id: str, key: str) -> Decision:
    listed = field(payload, key, kind=list, optional=True) or []
    repos = [repo for repo in listed if isinstance(repo, dict)][:PRIMED_AT_MOST]
    if not repos:
        return Ignore("no repositories to read the config of")
    installation_id = field(payload, "installation", "id", kind=int)
    requester = field(payload, "sender", "login")
    requester_id = field(payload, "sender", "id", kind=int)
    return Prime(
        tuple(
            SessionRequest(
                # One delivery, one session per repository: each id derived, so a redelivery of
                # the installation event queues none of them twice.
                delivery_id=f"{delivery_id}-r{field(repo, 'id', kind=int)}",
                installation_id=installation_id,
                repo=field(repo, "full_name"),
                number=0,
                requester=requester,
                requester_id=requester_id,
                instruction="",
                mode=Mode.REFRESH,
                trigger=Trigger.CONFIG,
            )
            for repo in repos
        )
    )


@handles("installation", "created")
def installed(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _primed(payload, delivery_id, "repositories")


@handles("installation_repositories", "added")
def repositories_added(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    return _primed(payload, delivery_id, "repositories_added")


# A Re-run after these; a session that succeeded has published its work (ask it again instead).
RERUNNABLE = frozenset({"failure", "timed_out", "cancelled"})


def _clicked(payload: dict, delivery_id: str, rerun: bool) -> Decision:
    session_id = field(payload, "check_run", "external_id", optional=True) or ""
    if not is_session_id(session_id):
        return Ignore("not the check run of a session")
    sender = field(payload, "sender", kind=dict)
    if is_bot(sender):
        return Ignore("bots never stop or re-run sessions")
    return Clicked(
        session_id=session_id,
        rerun=rerun,
        delivery_id=delivery_id,
        repo=field(payload, "repository", "full_name"),
        login=field(sender, "login"),
        login_id=field(sender, "id", kind=int),
        check_run_id=field(payload, "check_run", "id", kind=int),
    )


@handles("check_run", "requested_action")
def check_run_button(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    identifier = field(payload, "requested_action", "identifier", optional=True)
    if identifier != STOP_ACTION:
        return Ignore(f"no button {str(identifier)[:20]!r} on a session's check run")
    return _clicked(payload, delivery_id, rerun=False)


@handles("check_run", "rerequested")
def check_run_rerun(payload: dict, delivery_id: str, hints: RepoHints) -> Decision:
    conclusion = field(payload, "check_run", "conclusion", optional=True)
    if conclusion not in RERUNNABLE:
        return Ignore(f"a session that ended {conclusion} is not run again: ask again instead")
    return _clicked(payload, delivery_id, rerun=True)


def clicked_request(original: SessionRequest, click: Clicked) -> SessionRequest:
    """What the click asks, as a request of its own: the original session again (same mode,
    thread, instruction and trigger, the clicker asking, so the worker checks the clicker's
    access), or a stop of it by the clicker. Its content id makes each person's click on one
    run count once, whatever delivery brings it."""
    kind = "rerun" if click.rerun else "stop"
    return replace(
        original,
        delivery_id=click.delivery_id,
        requester=click.login,
        requester_id=click.login_id,
        mode=original.mode if click.rerun else Mode.STOP,
        content_id=f"{kind}:{click.check_run_id}:{click.login_id}",
    )
