"""What a session is asked to do: the plain values the web process queues for the worker.

Only primitives cross Redis (the queue uses RQ's JSON serializer): the worker fetches everything
else itself with a token it mints, so nothing stale or forged rides along in the queue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SessionRequest:
    delivery_id: str
    installation_id: int
    repo: str  # "owner/name"
    number: int  # issue number
    comment_id: int
    requester: str
    requester_id: int
    instruction: str

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo.split("/", 1)[1]

    def to_job(self) -> dict:
        return asdict(self)

    @classmethod
    def from_job(cls, values: dict) -> SessionRequest:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})
