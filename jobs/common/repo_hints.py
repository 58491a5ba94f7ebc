"""What the web process knows of a repository's `.github/claude.yml`, without calling GitHub.

The worker reads the config with a token and leaves the two facts the front door needs in Redis:
the trigger phrase and the bots allowed to trigger. A push that changes the config on the default
branch queues a refresh, so a new trigger phrase works from its first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

DEFAULT_TRIGGER = "/claude"


@dataclass(frozen=True)
class RepoHints:
    trigger: str = DEFAULT_TRIGGER
    bots: frozenset[str] = field(default_factory=frozenset)

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.trigger,)


def hints_key(repo: str) -> str:
    return f"claudecluster:repo:{repo.lower()}"


async def read_hints(redis: AsyncRedis, repo: str) -> RepoHints:
    try:
        raw = await redis.get(hints_key(repo))
    except RedisError:
        return RepoHints()  # the enqueue that follows reports the outage
    except UnicodeEncodeError:
        return RepoHints()  # a lone surrogate: field() refuses the payload next
    if not raw:
        return RepoHints()
    try:
        data = json.loads(raw)
        return RepoHints(str(data["trigger"]), frozenset(map(str, data.get("bots", []))))
    except (ValueError, KeyError, TypeError):
        return RepoHints()


def write_hints(redis: Redis, repo: str, trigger: str, bots: tuple[str, ...]) -> None:
    redis.set(hints_key(repo), json.dumps({"trigger": trigger, "bots": sorted(bots)}))
