"""The worker process: an RQ worker on the sessions queue (`python -m jobs.worker`).

It checks its configuration first, so a missing variable is one line at start-up rather than a
failure inside the first session, and it uses RQ's JSON serializer: the queue carries only plain
values, and nothing in Redis is ever unpickled.
"""

from __future__ import annotations

import sys

from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from app.config import WORKER_REQUIRED, ConfigError, load_settings
from app.enqueue import session_queue
from app.logs import configure_logging
from jobs.redact import redactor
from jobs.redelivery import schedule_sweep


class SessionWorker(Worker):
    """Also books a sweep of failed webhook deliveries at start and every maintenance tick.

    RQ runs maintenance at start and every ten minutes between jobs; the sweep's job id names
    its ten-minute slot, so any number of workers book one sweep per slot.
    """

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        schedule_sweep(self.queues[0])


def main() -> int:
    try:
        settings = load_settings(*WORKER_REQUIRED)
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        return 2
    configure_logging(redactor.learn(settings))
    redis = Redis.from_url(settings.redis_url)
    worker = SessionWorker(
        [session_queue(redis, settings.queue_name)], connection=redis, serializer=JSONSerializer
    )
    worker.work(with_scheduler=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
