"""`GET /healthz`: is the queue reachable? Load balancers and the run script poll it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        current_app.extensions["redis"].ping()
    except RedisError:
        return jsonify(status="degraded", redis="unreachable"), 503
    return jsonify(status="ok", redis="ok"), 200
