"""The comment of a session waiting for its installation's slot (jobs/common/fairness.py).

The worker that finds a session waiting hands it to its announcer (jobs/upkeep/announce.py),
which posts "⏳ Queued: …" on the thread; when the session starts, it takes that comment over as
its tracking comment instead of posting another. Both go through one Redis key, so a session
that starts while its queued comment is being posted waits for it, and one that started before
keeps the announcer from posting at all: one comment per session either way.
"""

from __future__ import annotations

import json
import time

from redis import Redis

from jobs.common.queue import DELIVERY_TTL

POSTING, STARTED = "posting", "started"
# Compare-and-delete: the thread's queued session, only if it is still this one.
_FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def note_key(session_id: str) -> str:
    """Set (by the pick) once a waiting session has been handed to the announcer."""
    return f"claudecluster:queued-note:{session_id}"


def comment_key(session_id: str) -> str:
    """POSTING, STARTED, or the queued comment's id and address as JSON."""
    return f"claudecluster:queued-comment:{session_id}"


def thread_key(thread: str) -> str:
    """The session said to be queued on `thread`, for `/claude stop` to find (app/enqueue.py)."""
    return f"claudecluster:queued:{thread}"


def claim_posting(redis: Redis, session_id: str) -> bool:
    """Whether the announcer may post: the session has not started, nobody else posts."""
    return bool(redis.set(comment_key(session_id), POSTING, nx=True, ex=600))


def posted(redis: Redis, session_id: str, thread: str, comment_id: int, url: str) -> None:
    value = json.dumps({"id": comment_id, "url": url})
    redis.set(comment_key(session_id), value, ex=DELIVERY_TTL)
    redis.set(thread_key(thread), session_id, ex=DELIVERY_TTL)


def not_posted(redis: Redis, session_id: str) -> None:
    """Posting failed: let a later pick hand the session to an announcer again."""
    if redis.get(comment_key(session_id)) == POSTING.encode():
        redis.delete(comment_key(session_id))
    redis.delete(note_key(session_id))


def take(redis: Redis, session_id: str, thread: str, wait: float = 20.0) -> tuple[int, str] | None:
    """At the session's start: its queued comment (id, address) to edit, or None to post one.

    Waits up to `wait` seconds for a comment being posted; past that it gives up on it (it is
    then left saying queued: a GitHub slow enough for that would also be slow for the session).
    """
    key = comment_key(session_id)
    deadline = time.monotonic() + wait
    while True:
        if redis.set(key, STARTED, nx=True, ex=DELIVERY_TTL):
            return None  # never announced, and now never will be
        raw = redis.get(key)
        if raw is not None and raw.decode() not in (POSTING, STARTED):
            redis.set(key, STARTED, ex=DELIVERY_TTL)
            redis.eval(_FORGET, 1, thread_key(thread), session_id)
            found = json.loads(raw)
            return int(found["id"]), str(found.get("url") or "")
        if raw is not None and raw.decode() == STARTED:
            return None  # taken before (RQ ran the job again)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.3)
