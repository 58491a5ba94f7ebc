"""One session per issue or pull request at a time, and `/claude stop` while one runs.

The thread's mark in Redis (`active_key`) holds it for one session; the next waits. The mark
also lets the web find the running session for a stop request; the session checks who asked
(the web holds no token to ask GitHub).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from redis import Redis
from redis.exceptions import RedisError

from jobs.common.queue import active_key, stop_key, stop_requests_key
from jobs.session.gate import may_trigger
from jobs.session.state import Session

log = logging.getLogger(__name__)


def hold_thread(session: Session) -> contextlib.AbstractContextManager[None]:
    return active(
        session.redis,
        session.request.thread,
        session.id,
        session.settings.session_timeout,
        session.tracking.waiting,
    )


@contextlib.contextmanager
def active(
    redis: Redis,
    thread: str,
    session_id: str,
    timeout: int,
    on_wait: Callable[[], None],
    poll: float = 3.0,
) -> Iterator[None]:
    """Hold `thread` for this session, `on_wait()` once if another holds it; the mark expires on
    its own, so a crashed worker cannot hold a thread forever."""
    key = active_key(thread)
    deadline = time.monotonic() + timeout
    announced = False
    while not redis.set(key, session_id, nx=True, ex=timeout + 600):
        holder = redis.get(key)
        if holder is not None and holder.decode() == session_id:
            break  # a retry of this very session
        if time.monotonic() > deadline:
            raise ThreadBusy(f"another session on #{thread.rsplit('#', 1)[1]} ran past the timeout")
        if not announced:
            on_wait()
            announced = True
        time.sleep(poll)
    try:
        yield
    finally:
        try:
            # Only our own mark: a stale one may have expired and been taken over.
            if (redis.get(key) or b"").decode() == session_id:
                redis.delete(key)
            redis.delete(stop_key(session_id), stop_requests_key(session_id))
        except RedisError as exc:
            # The session's answer is out; the mark expires on its own (timeout + 10 min).
            log.warning(
                "session %s: thread mark not cleared, Redis unreachable (%s)",
                session_id,
                type(exc).__name__,
            )


class ThreadBusy(RuntimeError):
    """The thread stayed busy with another session for longer than a session may run."""


class StopCheck:
    """The sandbox's stop check: the first stop request from someone who may trigger here
    stops the session; anyone else gets a short refusal and the session runs on."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._allowed = {session.request.requester}  # who started it may stop it

    def __call__(self) -> bool:
        redis, session_id = self.session.redis, self.session.id
        if redis.exists(stop_key(session_id)):
            return True
        while raw := redis.lpop(stop_requests_key(session_id)):
            login = raw.decode()
            try:
                allowed = login in self._allowed or may_trigger(
                    self.session.github, self.session.config, login
                )
            except Exception:
                # GitHub away for a moment: ask again at the next check, lose nobody's stop.
                redis.lpush(stop_requests_key(session_id), login)
                raise
            if allowed:
                redis.set(stop_key(session_id), login, ex=3600)
                return True
            log.info("session %s: stop by %s refused", session_id, login)
            self.session.tracking.stop_refused(login, self.session.config.min_permission)
        return False


def stopped_by(session: Session) -> str | None:
    value = session.redis.get(stop_key(session.id))
    return value.decode() if value else None


def stopped_while_queued(session: Session) -> dict | None:
    """The session's result when it was asked to stop while it waited in the queue (the fair
    pick starts such a session at once, app/enqueue.py finds it); None to run on."""
    if not session.redis.exists(stop_requests_key(session.id)) or not StopCheck(session)():
        return None
    by = stopped_by(session) or session.request.requester
    session.tracking.stopped(by)
    session.redis.delete(stop_key(session.id), stop_requests_key(session.id))
    return {"status": "stopped", "by": by}
