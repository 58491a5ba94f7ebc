"""What a session is asked to do: the plain values the web process queues for the worker.

Only primitives cross Redis (the queue uses RQ's JSON serializer): the worker fetches everything
else itself with a token it mints, so nothing stale or forged rides along in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

# The hidden marker that starts each of the bot's tracking comments: the front door drops any
# comment carrying it (so a tracking comment quoting `/claude` cannot loop), the reaper finds
# the comments it must end, the thread's material leaves them out.
MARKER = "<!-- claudecluster:session"
# Where a repository's settings live, read from its default branch only.
CONFIG_PATH = ".github/claude.yml"


class Mode(StrEnum):
    """What a session does. A StrEnum: it crosses the queue as its plain string."""

    IMPLEMENT = "implement"
    REVIEW = "review"
    FIX_CI = "fix-ci"  # fix what fails in the pull request's checks
    HELP = "help"
    STOP = "stop"
    REFRESH = "refresh"  # re-read .github/claude.yml and tell the web process what it needs


class Trigger(StrEnum):
    """What asked for the session."""

    COMMENT = "comment"  # an issue or pull request conversation comment
    REVIEW_COMMENT = "review_comment"  # an inline comment on a pull request's diff
    REVIEW = "review"  # a submitted review
    LABEL = "label"
    PUSH = "push"  # new commits on a labelled pull request
    CONFIG = "config"  # the repository's config changed, or the App was installed on it

    @property
    def commented(self) -> bool:
        """Asked in words, with the trigger phrase (not by a label or a push)."""
        return self in (Trigger.COMMENT, Trigger.REVIEW_COMMENT, Trigger.REVIEW)


@dataclass(frozen=True)
class SessionRequest:
    delivery_id: str
    installation_id: int
    repo: str  # "owner/name"
    number: int  # the or the pull request's number
    requester: str
    requester_id: int
    instruction: str
    comment_id: int = 0  # the issue/PR conversation comment that asked, if any
    pull: bool = False  # the thread is a pull request
    mode: Mode = Mode.IMPLEMENT
    trigger: Trigger = Trigger.COMMENT
    review_comment_id: int = 0  # the inline review comment that asked, if any
    review_id: int = 0  # the submitted review that asked, if any
    label: str = ""  # the label that asked, for label triggers
    phrase: str = "/claude"  # the trigger phrase the front door matched
    triggered_at: str = ""  # ISO time of the asking comment; later edits are not material
    # What the delivery is about, from its signed content (the comment's, review's or push's own
    # id): a captured delivery re-posted under a fresh X-GitHub-Delivery is still a duplicate.
    content_id: str = ""
    # The pull request's head when the request was made, where the payload says (review and
    # review-comment events); a fork's session works on that commit or not at all.
    head_sha: str = ""
    # `/claude fresh …`: start over instead of continuing the thread's earlier conversation.
    fresh: bool = False

    def __post_init__(self) -> None:
        # From the queue (JSON) they come as plain strings; an unknown one is a ValueError.
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "trigger", Trigger(self.trigger))

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo.split("/", 1)[1]

    @property
    def thread(self) -> str:
        """One key per issue or pull request: at most one session runs on it at a time."""
        return f"{self.repo}#{self.number}"

    def to_job(self) -> dict:
        # Every field is a primitive: a shallow copy is asdict()'s result for a tenth of its CPU.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_job(cls, values: dict) -> SessionRequest:
        # Tolerate jobs queued by an older release: unknown keys dropped, new ones defaulted.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
