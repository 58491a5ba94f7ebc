"""Asking GitHub again for the webhook deliveries the front door could not take.

GitHub does not retry a failed delivery: when Redis is down the front door answers 503 and the
event is lost unless somebody asks for it again. A sweep lists the App's deliveries
(`GET /app/hook/deliveries`, App JWT, newest first, cursor pagination) back to the start of
GitHub's redelivery window, groups the attempts by event (`guid`), and asks once
(`POST /app/hook/deliveries/{id}/attempts`) for every event that no attempt delivered (no 2xx)
and that Redis has not claimed (`claudecluster:delivery:<guid>`, set by `app.enqueue` when it
queues a session: GitHub may log a failure, a timeout, for a delivery we did take). A
redelivery carries the same `X-GitHub-Delivery`, so that claim also keeps it to one session.

What keeps sweeps from piling up:
* a sweep runs only when Redis answers (no claims can be read, and none taken, without it), and
  one at a time (a Redis lock);
* a requested redelivery is remembered in Redis (`claudecluster:redelivery:<guid>`, 10 min),
  so a second sweep, here or on another worker, leaves the event alone while GitHub sends it;
* an event whose redeliveries keep failing (the web process down, not Redis) waits longer
  after each one: 10 min, 20, 40 … at most 12 h, counted from GitHub's own log;
* at most `budget` requests per sweep, `gap` seconds apart (GitHub asks for at least one
  second between writes); the oldest events go first, being closest to leaving the window.

Scheduling: `schedule_sweep(queue)` puts a sweep on the worker's queue unless one already exists
for the current 10-minute slot (the job id names the slot). The worker calls it at start and
from RQ's periodic maintenance (every 10 minutes by default), so any number of workers make
one sweep per slot, and a Redis that lost its data gets a sweep again at the next tick.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from githubkit.exception import GitHubException, RequestFailed
from redis import Redis
from redis.exceptions import LockError, RedisError
from rq import Queue, get_current_job
from rq.exceptions import DuplicateJobError

from jobs.common.queue import claim_key
from jobs.common.settings import WorkerSettings
from jobs.github.client import app_client

log = logging.getLogger(__name__)

WINDOW = timedelta(days=3)  # github.com and GHEC: deliveries of the past 3 days can be redelivered
GHES_WINDOW = timedelta(days=7)  # GitHub Enterprise Server keeps them 7 days
BUDGET = 100  # redelivery requests per sweep
GAP = 1.0  # seconds between two requests
PER_PAGE = 100
MAX_PAGES = 100  # 10,000 deliveries: a sweep never pages forever
IN_FLIGHT_TTL = 600  # seconds a requested redelivery counts as in flight
BACKOFF = timedelta(minutes=10)  # after the n-th failed redelivery: BACKOFF * 2**(n-1) …
MAX_BACKOFF = timedelta(hours=12)  # … at most this
SWEEP_EVERY = timedelta(minutes=10)
SWEEP_JOB = "jobs.upkeep.redelivery.scheduled_sweep"
SWEEP_JOB_TIMEOUT = 900
SWEEP_LOCK = "claudecluster:redelivery:sweep"
SWEEP_REQUIRED = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY")

_NEXT_LINK = re.compile(r'<([^<>]+)>;\s*rel="next"')


def in_flight_key(guid: str) -> str:
    return f"claudecluster:redelivery:{guid}"


def window_for(settings: WorkerSettings) -> timedelta:
    """GitHub's redelivery window: 7 days on Enterprise Server (`…/api/v3`), else 3."""
    path = urlsplit(settings.github_api_url).path.rstrip("/")
    return GHES_WINDOW if path.endswith("/api/v3") else WINDOW


def backoff(redeliveries: int) -> timedelta:
    """How long to wait after the last of `redeliveries` failed redeliveries of one event."""
    if redeliveries <= 0:
        return timedelta(0)
    return min(BACKOFF * 2 ** min(redeliveries - 1, 16), MAX_BACKOFF)


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as GitHub lists it (`hook-delivery-item`)."""

    id: int
    guid: str
    delivered_at: datetime
    redelivery: bool
    status_code: int
    status: str
    event: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @classmethod
    def parse(cls, item: Any) -> Attempt | None:
        try:
            when = datetime.fromisoformat(str(item["delivered_at"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return cls(
                id=int(item["id"]),
                guid=str(item["guid"]),
                delivered_at=when,
                redelivery=bool(item.get("redelivery")),
                status_code=int(item.get("status_code") or 0),
                status=str(item.get("status") or ""),
                event=str(item.get("event") or ""),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class SweepReport:
    skipped: str | None = None  # why nothing was done: Redis unreachable, another sweep running
    pages: int = 0
    scanned: int = 0  # delivery attempts inside the window
    events: int = 0  # distinct guids among them
    failed: int = 0  # events that no attempt delivered
    accepted: int = 0  # … which Redis had claimed all the same (taken; GitHub logged a timeout)
    in_flight: int = 0  # … with a redelivery requested and not yet logged
    backing_off: int = 0  # … whose last redelivery failed too recently
    deferred: int = 0  # … left for the next sweep, this one's budget being spent
    redelivered: list[str] = field(default_factory=list)  # guids GitHub was asked to send again
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RequestFailed):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


def _next_cursor(link: str | None) -> str | None:
    match = _NEXT_LINK.search(link or "")
    if match is None:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("cursor")
    return values[0] if values else None


def _list_attempts(gh, cutoff: datetime, per_page: int, report: SweepReport) -> list[Attempt]:
    """The App's delivery attempts since `cutoff`, newest first; raises GitHubException."""
    attempts: list[Attempt] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {"per_page": per_page}
        if cursor:
            params["cursor"] = cursor
        response = gh.rest.apps.list_webhook_deliveries(**params)
        report.pages += 1
        items = response.json()
        for item in items:
            attempt = Attempt.parse(item)
            if attempt is None:
                continue
            if attempt.delivered_at < cutoff:
                return attempts  # newest first: everything after this is older still
            attempts.append(attempt)
        cursor = _next_cursor(response.headers.get("link"))
        if not cursor or not items:
            return attempts
    report.errors.append(f"stopped listing after {MAX_PAGES} pages")
    return attempts


def sweep(
    settings: WorkerSettings,
    redis: Redis,
    since: timedelta = WINDOW,
    *,
    budget: int = BUDGET,
    gap: float = GAP,
    pause: Callable[[float], None] = time.sleep,
    per_page: int = PER_PAGE,
) -> SweepReport:
    """Ask GitHub once more for every recent event that never reached the queue."""
    report = SweepReport()
    try:
        redis.ping()
        lock = redis.lock(SWEEP_LOCK, timeout=int(budget * gap) + 600, blocking=False)
        if not lock.acquire():
            report.skipped = "another sweep is running"
            return report
    except RedisError as exc:
        report.skipped = f"redis unreachable ({type(exc).__name__})"
        return report
    try:
        _sweep(settings, redis, since, _Pace(budget, gap, pause, per_page), report)
    except RedisError as exc:
        report.errors.append(f"redis failed during the sweep ({type(exc).__name__})")
    finally:
        with contextlib.suppress(LockError, RedisError):
            lock.release()  # expired or unreachable: its timeout frees it
    if report.redelivered or report.errors:
        log.info(
            "redelivery sweep: %d redelivered, %d failed events, %d errors",
            len(report.redelivered),
            report.failed,
            len(report.errors),
        )
    return report


@dataclass(frozen=True)
class _Pace:
    """How hard one sweep may ask: `budget` redeliveries, `gap` seconds apart (waited out with
    `pause`), listing `per_page` attempts a page."""

    budget: int
    gap: float
    pause: Callable[[float], None]
    per_page: int


def _sweep(
    settings: WorkerSettings, redis: Redis, since: timedelta, pace: _Pace, report: SweepReport
) -> None:
    moment = datetime.now(UTC)
    # Keep the client in a variable: `.rest` holds only a weak reference to it.
    gh = app_client(settings)
    try:
        attempts = _list_attempts(gh, moment - since, pace.per_page, report)
    except GitHubException as exc:
        # Half a log could hide an event's success: act on none of it.
        report.errors.append(f"listing deliveries failed: {_describe(exc)}")
        log.warning("redelivery sweep: listing deliveries failed: %s", _describe(exc))
        return
    report.scanned = len(attempts)
    events: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        events.setdefault(attempt.guid, []).append(attempt)
    report.events = len(events)
    failed = [tries for tries in events.values() if not any(t.ok for t in tries)]
    report.failed = len(failed)
    failed.sort(key=lambda tries: min(t.delivered_at for t in tries))  # oldest event first

    requests = 0
    for tries in failed:
        guid = tries[0].guid
        if redis.exists(claim_key(guid)):
            report.accepted += 1
            continue
        redeliveries = [t for t in tries if t.redelivery]
        if redeliveries:
            last = max(t.delivered_at for t in redeliveries)
            if moment - last < backoff(len(redeliveries)):
                report.backing_off += 1
                continue
        if requests >= pace.budget:
            report.deferred += 1
            continue
        latest = max(tries, key=lambda t: (t.delivered_at, t.id))
        if not redis.set(in_flight_key(guid), latest.id, nx=True, ex=IN_FLIGHT_TTL):
            report.in_flight += 1
            continue
        if requests:
            pace.pause(pace.gap)
        requests += 1
        try:
            gh.rest.apps.redeliver_webhook_delivery(latest.id)
        except GitHubException as exc:
            report.errors.append(f"redelivery of {guid} refused: {_describe(exc)}")
            status = exc.response.status_code if isinstance(exc, RequestFailed) else 0
            if 400 <= status < 500 and status not in (403, 429):
                continue  # GitHub said no (too old, gone): the marker holds off asking again
            redis.delete(in_flight_key(guid))
            log.warning("redelivery sweep stopped: GitHub answered %s", _describe(exc))
            return  # GitHub unwell or limiting us: the next sweep tries again
        report.redelivered.append(guid)
        log.info("asked GitHub to redeliver %s (%s)", guid, latest.event)


# --------------------------------------------------------------------------- scheduling


def sweep_job_id(every: timedelta = SWEEP_EVERY, at: float | None = None) -> str:
    seconds = max(int(every.total_seconds()), 60)
    return f"redelivery-sweep-{int((time.time() if at is None else at) // seconds)}"


def schedule_sweep(queue: Queue, every: timedelta = SWEEP_EVERY) -> str | None:
    """Queue a sweep (at the front) unless this slot of `every` has one already; its job id,
    or None. Never raises: the worker calls it from its maintenance loop."""
    seconds = max(int(every.total_seconds()), 60)
    job_id = sweep_job_id(every)
    try:
        queue.enqueue_call(
            SWEEP_JOB,
            job_id=job_id,
            unique=True,
            at_front=True,
            timeout=SWEEP_JOB_TIMEOUT,
            ttl=seconds,  # not started within its slot: the next slot's sweep will do
            result_ttl=seconds,  # the id stays taken for the rest of the slot
            failure_ttl=24 * 3600,
            description="redeliver failed webhook deliveries",
        )
    except DuplicateJobError:
        return None
    except RedisError as exc:
        log.warning("could not schedule a redelivery sweep: %s", type(exc).__name__)
        return None
    return job_id


def scheduled_sweep() -> dict:
    """The RQ job: one sweep over GitHub's whole redelivery window."""
    settings = WorkerSettings.load(*SWEEP_REQUIRED)
    current = get_current_job()
    redis = current.connection if current else Redis.from_url(settings.redis_url)
    return sweep(settings, redis, window_for(settings)).as_dict()
