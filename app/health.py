"""Health: `GET /healthz` (is the queue reachable? load balancers and the run script poll it),
`/livez` (this process answers: no dependency is checked, so a Redis outage restarts nothing)
and `/readyz` (may it take deliveries: Redis answers; the web has no Docker socket, so Docker
is the worker's readiness, on its own endpoint)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError

from jobs.common.endpoint import readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    # In setup mode the process is healthy and says what it waits for.
    setup = {"setup": "required: open /setup"} if current_app.extensions["setup"].open else {}
    try:
        current_app.extensions["redis"].ping()
    except RedisError:
        return jsonify(status="degraded", redis="unreachable", **setup), 503
    return jsonify(status="ok", redis="ok", **setup), 200


@bp.get("/livez")
def livez():
    return jsonify(status="alive"), 200


@bp.get("/readyz")
def readyz():
    status, body = readiness({"redis": current_app.extensions["redis"].ping})
    return jsonify(body), status
