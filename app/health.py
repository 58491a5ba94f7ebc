"""`GET /healthz`: is the queue reachable? Load balancers and the run script poll it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError

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
