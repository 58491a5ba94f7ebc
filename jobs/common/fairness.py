"""Fair sharing between installations: a limit on each one's running sessions, a fair pick.

RQ stays the queue; what changes is which queued job a worker takes. `FairQueue.dequeue_any`
(the method RQ's worker calls for its next job) runs one Lua script instead of RQ's LMOVE of
the list's head. Over the first `scan` jobs of the queue the script takes the job of the
installation with the fewest running sessions, then the one that started a session least
recently (so one worker alternates too), then the earliest queued; an installation at its
limit is skipped, and its jobs stay where they are in the queue (nothing is re-enqueued, so
nothing can be lost or run twice). The script moves the job to RQ's intermediate list, as
RQ's own LMOVE does, so RQ's maintenance still finds a job whose worker died right after the
pick; and it books the installation's slot in the same step, so two workers never both take
the last slot or the same job.

A slot is a member `installation/session` of one sorted set, scored by its lease's end: the
worker renews it with each heartbeat and removes it when the job ends. A worker or host that
dies stops renewing, and the slot frees itself when the lease ends (RQ's heartbeat grace: the
same moment RQ finds the job abandoned), or sooner when crash recovery ends the session's
comment (jobs/upkeep/interrupted.py).

Jobs without an installation in their meta (the redelivery sweep; stops, help, config reads,
which run no sandbox) are never limited and go first; so does a queued job someone asked to
stop, so that its stop is answered now rather than after the burst ahead of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job

from jobs.common.queue import DELIVERY_TTL, stop_requests_key
from jobs.common.queued import note_key
from jobs.common.request import Mode, SessionRequest

log = logging.getLogger(__name__)

INSTALLATION_META = "installation"  # job.meta: the installation whose slot the job takes
SLOTS = "claudecluster:slots"  # sorted set: "installation/session" -> lease end (epoch s)
LAST_START = "claudecluster:slots:last-start"  # hash: installation -> its last pick (epoch s)
# Modes that run a sandbox, and so take a slot; the others answer in a second or two.
LIMITED_MODES = frozenset({Mode.IMPLEMENT, Mode.REVIEW, Mode.FIX_CI})


def installation_meta(request: SessionRequest) -> dict[str, str]:
    """The job's meta at enqueue: the installation, for the sessions that take a slot."""
    if request.mode not in LIMITED_MODES:
        return {}
    return {INSTALLATION_META: str(request.installation_id)}


def job_installation(job: Job) -> str:
    return str((job.meta or {}).get(INSTALLATION_META) or "")


@dataclass(frozen=True)
class Fairness:
    """`limit` sessions per installation at once (0: no limit), `lease` seconds a slot holds
    without a heartbeat, over the first `scan` queued jobs; `poll` seconds between two looks
    while every queued job's installation is at its limit."""

    limit: int = 4
    lease: int = 90
    scan: int = 500
    poll: float = 1.0


@dataclass(frozen=True)
class Pick:
    job_id: str | None  # None: nothing may start now
    waiting: list[tuple[str, int]]  # sessions newly found at their limit, with its count


# KEYS: the queue's list, RQ's intermediate list, SLOTS, LAST_START.
# ARGV: now, lease end, limit (0: none), scan, RQ's job key prefix, note prefix, stop requests
# prefix, note TTL, most newly waiting sessions to return.
# Returns {picked id or '', waiting id, its installation's count, ...}.
PICK = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local running = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local inst = string.match(member, '^([^/]*)/')
    if inst then running[inst] = (running[inst] or 0) + 1 end
end
local last = {}
local best, best_inst, best_key = nil, nil, nil
local waiting = {}
local max_waiting = tonumber(ARGV[9])
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)) do
    local inst = ''
    local meta = redis.call('HGET', ARGV[5] .. id, 'meta')
    if meta then
        local ok, decoded = pcall(cjson.decode, meta)
        if ok and type(decoded) == 'table' and type(decoded['installation']) == 'string' then
            inst = decoded['installation']
        end
    end
    local count = running[inst] or 0
    local key
    if inst == '' or redis.call('EXISTS', ARGV[7] .. id) == 1 then
        key = {-1, 0}
    elseif limit > 0 and count >= limit then
        key = nil
        if #waiting < 2 * max_waiting and redis.call('EXISTS', ARGV[6] .. id) == 0 then
            waiting[#waiting + 1] = id
            waiting[#waiting + 1] = count
        end
    else
        if last[inst] == nil then
            last[inst] = tonumber(redis.call('HGET', KEYS[4], inst) or '0')
        end
        key = {count, last[inst]}
    end
    if key and (best_key == nil or key[1] < best_key[1]
            or (key[1] == best_key[1] and key[2] < best_key[2])) then
        best, best_inst, best_key = id, inst, key
    end
end
for i = 1, #waiting, 2 do
    redis.call('SET', ARGV[6] .. waiting[i], 'noted', 'EX', ARGV[8])
end
if best == nil then
    return {'', unpack(waiting)}
end
redis.call('LREM', KEYS[1], 1, best)
redis.call('RPUSH', KEYS[2], best)
if best_inst ~= '' then
    redis.call('ZADD', KEYS[3], ARGV[2], best_inst .. '/' .. best)
    redis.call('HSET', KEYS[4], best_inst, ARGV[1])
    redis.call('EXPIRE', KEYS[4], 86400)
end
return {best, unpack(waiting)}
"""


def pick(redis: Redis, queue: Queue, fairness: Fairness, max_waiting: int = 20) -> Pick:
    """Take the fairest startable job off `queue` (into RQ's intermediate list), booking its
    slot; and the sessions newly found waiting for one."""
    now = time.time()
    reply = redis.eval(
        PICK,
        4,
        queue.key,
        queue.intermediate_queue_key,
        SLOTS,
        LAST_START,
        now,
        now + fairness.lease,
        fairness.limit,
        fairness.scan,
        Job.redis_job_namespace_prefix,
        note_key(""),
        stop_requests_key(""),
        DELIVERY_TTL,
        max_waiting,
    )
    picked = reply[0].decode() if reply[0] else None
    rest = reply[1:]
    waiting = [(rest[i].decode(), int(rest[i + 1])) for i in range(0, len(rest), 2)]
    return Pick(picked, waiting)


def slot_member(job: Job) -> str | None:
    installation = job_installation(job)
    return f"{installation}/{job.id}" if installation else None


def renew(redis: Redis, job: Job, fairness: Fairness) -> None:
    """Extend the job's slot (only if it still has one: a lapsed lease is not taken back)."""
    if member := slot_member(job):
        redis.zadd(SLOTS, {member: time.time() + fairness.lease}, xx=True)


def release(redis: Redis, installation: str | int, session_id: str) -> None:
    redis.zrem(SLOTS, f"{installation}/{session_id}")


def running(redis: Redis, installation: str | int) -> int:
    """Sessions of `installation` holding a live slot now."""
    prefix = f"{installation}/"
    live = redis.zrangebyscore(SLOTS, time.time(), "+inf")
    return sum(1 for member in live if member.decode().startswith(prefix))


class FairQueue(Queue):
    """An RQ queue whose `dequeue_any` is the fair pick; `fairness` and `on_waiting` are set on
    a subclass per worker (`fair_queue_class`), since RQ calls `dequeue_any` on the class."""

    fairness: ClassVar[Fairness] = Fairness()
    on_waiting: ClassVar[Callable[[list[tuple[str, int]]], None] | None] = None

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer=None,
        death_penalty_class=None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for queue in queues:
                found = cls._take(queue, connection, job_class, serializer)
                if found is not None:
                    return found
            if deadline is None:
                return None  # burst mode: one look
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, [q.key for q in queues])
            if len(queues) == 1 and not connection.llen(queues[0].key):
                # Nothing queued: block until something is, as RQ's BLMOVE does. A move from
                # the list's head to its head changes nothing: a wait that leaves the order.
                connection.blmove(queues[0].key, queues[0].key, max(1, int(left)), "LEFT", "LEFT")
            else:  # jobs queued, none startable: look again once a slot may have freed
                time.sleep(min(cls.fairness.poll, left))

    @classmethod
    def _take(
        cls, queue: Queue, connection: Redis, job_class: type[Job] | None, serializer
    ) -> tuple[Job, Queue] | None:
        picked = pick(connection, queue, cls.fairness)
        if picked.waiting and cls.on_waiting is not None:
            cls.on_waiting(picked.waiting)
        if picked.job_id is None:
            return None
        job_cls = job_class or queue.job_class
        try:
            job = job_cls.fetch(picked.job_id, connection=connection, serializer=serializer)
        except NoSuchJobError:  # as RQ: a job that no longer exists is passed over
            connection.lrem(queue.intermediate_queue_key, 1, picked.job_id)
            connection.eval(_RELEASE_ANY, 1, SLOTS, f"/{picked.job_id}")
            return None
        return job, queue


# KEYS: SLOTS; ARGV: "/session": removes that session's slot whatever its installation.
_RELEASE_ANY = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(member, -#ARGV[1]) == ARGV[1] then redis.call('ZREM', KEYS[1], member) end
end
return 0
"""


def fair_queue_class(
    fairness: Fairness, on_waiting: Callable[[list[tuple[str, int]]], None] | None = None
) -> type[FairQueue]:
    return type(
        "FairQueue", (FairQueue,), {"fairness": fairness, "on_waiting": staticmethod(on_waiting)}
    )


class FairWorker(Worker):
    """An RQ worker that takes its jobs by the fair pick and holds each one's slot while it
    runs: renewed with the job's heartbeat, given back when the job ends."""

    def __init__(
        self, queues: Sequence[Queue], *args, fairness: Fairness | None = None, **kwargs
    ) -> None:
        super().__init__(queues, *args, **kwargs)
        self.fairness = fairness or Fairness()
        self.queue_class = fair_queue_class(self.fairness, self.sessions_waiting)

    def sessions_waiting(self, waiting: list[tuple[str, int]]) -> None:
        """Sessions newly found waiting for their installation's slot; each is given once."""

    def maintain_heartbeats(self, job: Job) -> None:
        super().maintain_heartbeats(job)
        renew(self.connection, job, self.fairness)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            if installation := job_installation(job):
                release(self.connection, installation, job.id)
