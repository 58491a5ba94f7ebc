"""The web's `/metrics` (outside any login) and its count of deliveries.

The web's series are summed over gunicorn's workers (jobs/common/metrics.py); the queue's depth
is read from Redis at each scrape, so any web process answers it. The workers' series are
scraped from each worker (its METRICS_PORT), where their horses write them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from flask import Blueprint, Response, current_app
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from jobs.common.metrics import CONTENT_TYPE, exposition, web_series

bp = Blueprint("metrics", __name__)

# The events a delivery is counted under: the App's (app.yml) and those GitHub always sends.
# The header is read before the signature is checked, so anything else is "other": a label
# per made-up name would grow every process's metrics file without bound.
EVENTS = frozenset(
    {
        "issue_comment",
        "issues",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "push",
        "ping",
        "installation",
        "installation_repositories",
        "github_app_authorization",
        "check_run",
        "check_suite",
    }
)


def count_delivery(event: str, status: int) -> None:
    """On the front door's path: an increment in a memory-mapped file (under a microsecond)."""
    _delivery_count(event if event in EVENTS else "other", status).inc()


@cache  # bounded: the events above and "other", times the few statuses the door answers
def _delivery_count(event: str, status: int) -> Counter:
    return web_series().deliveries.labels(event, str(status))


class QueueDepth:
    """Sessions waiting in the queue, and whether Redis answered, read at each scrape."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis, self.queue_name = redis, queue_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("claudecluster_redis_up", "Whether Redis answered this scrape")
        try:
            depth = Queue(self.queue_name, connection=self.redis).count
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "claudecluster_queue_depth", "Sessions queued, not yet started", value=depth
        )


@bp.get("/metrics")
def metrics() -> Response:
    return Response(exposition([current_app.extensions["queue_depth"]]), mimetype=CONTENT_TYPE)
