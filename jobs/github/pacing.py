"""Pacing GitHub writes per installation, below GitHub's content-creation limits.

GitHub allows about 80 content-creating requests a minute and 500 an hour per installation, and
asks for at least a second between writes. Every worker shares these budgets through Redis.
Essential writes (the first and the final comment) wait for their turn; progress updates are
optional and are skipped when the budget is tight, so a busy installation never gets throttled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PER_MINUTE = 80
PER_HOUR = 500
# Progress updates leave this much of each budget to the writes that must happen.
RESERVE_MINUTE = 20
RESERVE_HOUR = 100
GAP = 1.0  # seconds between two writes of one installation

# Atomic check-and-take: KEYS = last, minute, hour; ARGV = now, gap, per_min, per_hour.
_TAKE = """
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if now - last < tonumber(ARGV[2]) then return tostring(tonumber(ARGV[2]) - (now - last)) end
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
local h = tonumber(redis.call('GET', KEYS[3]) or '0')
if m >= tonumber(ARGV[3]) then return '-1' end
if h >= tonumber(ARGV[4]) then return '-2' end
redis.call('SET', KEYS[1], tostring(now), 'EX', 60)
redis.call('INCR', KEYS[2]); redis.call('EXPIRE', KEYS[2], 120)
redis.call('INCR', KEYS[3]); redis.call('EXPIRE', KEYS[3], 7200)
return '0'
"""


class Pacer:
    def __init__(self, redis: Redis, installation_id: int, clock=time.time, sleep=time.sleep):
        self.redis = redis
        self.installation_id = installation_id
        self._clock = clock
        self._sleep = sleep
        self._take = redis.register_script(_TAKE)

    def _keys(self, now: float) -> list[str]:
        base = f"claudecluster:pace:{self.installation_id}"
        return [f"{base}:last", f"{base}:m:{int(now // 60)}", f"{base}:h:{int(now // 3600)}"]

    def _try(self, per_minute: int, per_hour: int) -> float | None:
        """0 when a write may happen now; else seconds to wait (-1/-2: budget spent).

        None when Redis is away: there is no shared pace to keep until it is back.
        """
        now = self._clock()
        try:
            return float(self._take(self._keys(now), [now, GAP, per_minute, per_hour]))
        except RedisError as exc:
            log.warning("pacing: Redis unreachable (%s)", type(exc).__name__)
            return None

    def essential(
        self, limit: float = 120.0, wait: Callable[[float], object] | None = None
    ) -> bool:
        """Wait for a turn for a write that must happen (bounded: never hold a session long).

        Without Redis the write goes ahead: GitHub's own limits are honoured by the retries.
        `wait` sleeps in place of the pacer's own sleep; when it answers True (a set
        `threading.Event`'s `wait`), the writer gave up and False is answered, no turn taken.
        """
        sleep = wait or self._sleep
        deadline = self._clock() + limit
        while (left := self._try(PER_MINUTE, PER_HOUR)) not in (0, None) and (
            self._clock() < deadline
        ):
            if sleep(min(max(left, 0) or 5.0, deadline - self._clock())) is True:
                return False
        return True

    def optional(self) -> bool:
        """Take a turn for a progress update only if one is free now, leaving a reserve.

        Without Redis, progress waits: the final comment matters more.
        """
        return self._try(PER_MINUTE - RESERVE_MINUTE, PER_HOUR - RESERVE_HOUR) == 0
