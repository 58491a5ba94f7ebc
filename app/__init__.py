"""The ClaudeCluster web process: a Flask application factory (`gunicorn 'app:create_app()'`)."""

from __future__ import annotations

import sys

from flask import Flask
from redis import Redis

from app.config import WEB_REQUIRED, ConfigError, Settings, load_settings

# GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
MAX_PAYLOAD = 25 * 1024 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        try:
            settings = load_settings(*WEB_REQUIRED)
        except ConfigError as exc:
            # One line naming the variable, instead of a traceback from deep inside gunicorn.
            print(f"configuration: {exc}", file=sys.stderr, flush=True)
            # 3 is gunicorn's "worker failed to boot": the master stops instead of respawning.
            raise SystemExit(3) from None

    from app import health, webhooks
    from app.enqueue import session_queue
    from app.logs import configure_logging
    from jobs.redact import redactor

    configure_logging(redactor.learn(settings))
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_PAYLOAD,
        WEBHOOK_SECRET=settings.github_webhook_secret,
        SESSION_TIMEOUT=settings.session_timeout,
    )
    # Short timeouts: a dead Redis must turn into a quick 503, not a hung delivery.
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.extensions["redis"] = redis
    app.extensions["session_queue"] = session_queue(redis, settings.queue_name)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    return app
