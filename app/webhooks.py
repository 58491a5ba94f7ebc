"""`POST /webhooks`: verify, decide, enqueue, answer in milliseconds.

No GitHub API call and no Docker call happen here: GitHub gives a delivery 10 s, and the worker
does everything slow with a token it mints itself.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, current_app, jsonify, request
from githubkit.webhooks import verify
from redis.exceptions import RedisError

from app.enqueue import enqueue_session, request_stop
from app.payload import PayloadError
from app.repo_hints import RepoHints, read_hints
from app.triggers import Ignore, decide, handler_for
from jobs.request import STOP

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


def _reply(code: int, **body: object):
    return jsonify(body), code


class _HintsOnDemand:
    """The repository's `RepoHints`, read from Redis when a handler first looks at them.

    Only comment handlers do; pushes, new commits and labels never need the round trip, which
    costs a threaded worker more CPU than parsing the payload (docs/reliability.md, "Load").
    """

    __slots__ = ("_redis", "_repo", "_hints")

    def __init__(self, redis, repo: str) -> None:
        self._redis, self._repo, self._hints = redis, repo, None

    def __getattr__(self, name: str):
        if self._hints is None:
            self._hints = read_hints(self._redis, self._repo)
        return getattr(self._hints, name)


@bp.post("/webhooks")
def receive():
    body = request.get_data(cache=False)
    signature = request.headers.get("X-Hub-Signature-256", "")
    secret = current_app.config["WEBHOOK_SECRET"]
    # githubkit's verify uses hmac.compare_digest; SHA-1 signatures are refused as too weak.
    if not signature.startswith("sha256=") or not verify(secret, body, signature):
        return _reply(401, error="bad or missing X-Hub-Signature-256")

    event = request.headers.get("X-GitHub-Event", "")
    delivery = request.headers.get("X-GitHub-Delivery", "")
    if not event or not delivery:
        return _reply(400, error="missing X-GitHub-Event or X-GitHub-Delivery")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return _reply(400, error="body is not JSON")
    if not isinstance(payload, dict):
        return _reply(400, error="body is not a JSON object")
    if event == "ping":
        return _reply(200, status="pong")

    try:
        hints = RepoHints()
        repo = payload.get("repository")
        if handler_for(event, payload) and isinstance(repo, dict) and repo.get("full_name"):
            hints = _HintsOnDemand(current_app.extensions["redis"], str(repo["full_name"]))
        decision = decide(event, payload, delivery, hints)
    except PayloadError as exc:
        return _reply(400, error=f"malformed {event} payload: {exc}")
    if isinstance(decision, Ignore):
        return _reply(200, status="ignored", reason=decision.reason)

    try:
        if decision.request.mode == STOP:
            stopping = request_stop(current_app.extensions["redis"], decision.request)
            if stopping is not None:
                return _reply(202, status="stopping", session=stopping)
        queued = enqueue_session(
            current_app.extensions["session_queue"],
            decision.request,
            timeout=current_app.config["SESSION_TIMEOUT"],
        )
    except RedisError:
        log.warning("queue unavailable; delivery %s refused with 503", delivery)
        return _reply(503, error="queue unavailable, redeliver later")
    if queued.duplicate:
        return _reply(200, status="duplicate", session=queued.session_id)
    log.info(
        "queued %s for %s#%s", queued.session_id, decision.request.repo, decision.request.number
    )
    return _reply(202, status="queued", session=queued.session_id)
