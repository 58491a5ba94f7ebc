"""`POST /webhooks`: verify, decide, enqueue, answer in milliseconds.

No GitHub API call and no Docker call happen here: GitHub gives a delivery 10 s, and the worker
does everything slow with a token it mints itself. The receiver is async and knows nothing of
HTTP framing (app/service.py does that): a delivery's only waits are on Redis, and an event loop
waits on a thousand of them for less CPU than threads do (docs/reliability.md, "Load").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from githubkit.webhooks import verify
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rq import Queue

from app.enqueue import enqueue_session, queued_request, request_stop, request_stop_of
from app.payload import PayloadError
from app.triggers import Clicked, Forget, Ignore, Prime, clicked_request, decide, reads_hints
from jobs.common.logs import log_ids
from jobs.common.repo_hints import RepoHints, read_hints
from jobs.common.request import Mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, object]


def parse(body: bytes) -> object:
    """The payload: orjson (a third of json's CPU on GitHub's payloads) and, for what it refuses
    (lone surrogates, NaN, a BOM), the standard library, so no delivery is refused that json
    would read. orjson reads integers past 64 bits as floats; GitHub's ids are 64-bit."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class Webhooks:
    """Answers one delivery, given its headers (names in lower case) and its raw body."""

    def __init__(self, secret: str, redis: Redis, queue: Queue, session_timeout: int) -> None:
        self.secret, self.redis, self.queue = secret, redis, queue
        self.session_timeout = session_timeout

    async def receive(self, headers: Mapping[str, str], body: bytes) -> Answer:
        signature = headers.get("x-hub-signature-256", "")
        # githubkit's verify uses hmac.compare_digest; SHA-1 signatures are refused as too weak.
        if not signature.startswith("sha256=") or not verify(self.secret, body, signature):
            return Answer(401, {"error": "bad or missing X-Hub-Signature-256"})

        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery", "")
        if not event or not delivery:
            return Answer(400, {"error": "missing X-GitHub-Event or X-GitHub-Delivery"})
        try:
            payload = parse(body)
        except (ValueError, RecursionError):
            return Answer(400, {"error": "body is not JSON"})
        if not isinstance(payload, dict):
            return Answer(400, {"error": "body is not a JSON object"})
        if event == "ping":
            return Answer(200, {"status": "pong"})
        with log_ids(delivery=delivery):
            return await self.handle(event, delivery, payload)

    async def handle(self, event: str, delivery: str, payload: dict) -> Answer:
        """A verified delivery: decide, then queue what it asks for."""
        try:
            hints = RepoHints()
            repo = payload.get("repository")
            # Only comment handlers look at the repository's trigger phrase and allowed bots;
            # pushes, new commits and labels never pay for the round trip.
            if reads_hints(event, payload) and isinstance(repo, dict) and repo.get("full_name"):
                hints = await read_hints(self.redis, str(repo["full_name"]))
            decision = decide(event, payload, delivery, hints)
        except PayloadError as exc:
            return Answer(400, {"error": f"malformed {event} payload: {exc}"})
        if isinstance(decision, Ignore):
            return Answer(200, {"status": "ignored", "reason": decision.reason})
        if isinstance(decision, Prime):
            return await self.prime(delivery, decision)
        if isinstance(decision, Clicked):
            return await self.clicked(decision)
        if isinstance(decision, Forget):
            return await self.forget(delivery, decision)

        request = decision.request
        try:
            if request.mode == Mode.STOP:
                stopping = await request_stop(self.redis, request)
                if stopping is not None:
                    return Answer(202, {"status": "stopping", "session": stopping})
            queued = await enqueue_session(
                self.redis, self.queue, request, timeout=self.session_timeout
            )
        except RedisError:
            log.warning("queue unavailable; delivery %s refused with 503", delivery)
            return Answer(503, {"error": "queue unavailable, redeliver later"})
        if queued.duplicate:
            return Answer(200, {"status": "duplicate", "session": queued.session_id})
        with log_ids(session=queued.session_id):
            log.info("queued %s for %s#%s", queued.session_id, request.repo, request.number)
        return Answer(202, {"status": "queued", "session": queued.session_id})

    async def prime(self, delivery: str, decision: Prime) -> Answer:
        """Queue a config read for each repository an installation brought."""
        sessions = []
        try:
            for request in decision.requests:
                queued = await enqueue_session(
                    self.redis, self.queue, request, timeout=self.session_timeout
                )
                sessions.append(queued.session_id)
        except RedisError:
            # Those queued stay queued; GitHub's redelivery queues the rest, none twice.
            log.warning("queue unavailable; delivery %s refused with 503", delivery)
            return Answer(503, {"error": "queue unavailable, redeliver later"})
        log.info("queued %d config reads for delivery %s", len(sessions), delivery)
        return Answer(202, {"status": "queued", "sessions": sessions})

    async def forget(self, delivery: str, decision: Forget) -> Answer:
        """A closed thread's conversation is not kept: the next session there starts fresh."""
        try:
            await self.redis.delete(decision.thread.key)
        except RedisError:
            log.warning("Redis unavailable; delivery %s refused with 503", delivery)
            return Answer(503, {"error": "queue unavailable, redeliver later"})
        return Answer(200, {"status": "forgotten"})

    async def clicked(self, click: Clicked) -> Answer:
        """Stop or Re-run on a session's check run: as `/claude stop` or the same request again,
        by the person who clicked (the worker checks their access, as for a comment)."""
        try:
            original = await queued_request(self.redis, click.session_id)
            if original is None or original.repo != click.repo:
                return Answer(200, {"status": "ignored", "reason": "the session is not known"})
            request = clicked_request(original, click)
            if not click.rerun:
                asked = await request_stop_of(self.redis, click.session_id, request)
                status = {1: "stopping", 0: "duplicate"}.get(asked, "not running")
                return Answer(202 if asked == 1 else 200, {"status": status})
            queued = await enqueue_session(
                self.redis, self.queue, request, timeout=self.session_timeout
            )
        except RedisError:
            log.warning("queue unavailable; delivery %s refused with 503", click.delivery_id)
            return Answer(503, {"error": "queue unavailable, redeliver later"})
        if queued.duplicate:
            return Answer(200, {"status": "duplicate", "session": queued.session_id})
        log.info("re-run of %s queued as %s", click.session_id, queued.session_id)
        return Answer(202, {"status": "queued", "session": queued.session_id})
