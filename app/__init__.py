"""The ClaudeCluster web process.

`create_service()` is what gunicorn serves (the Procfile's `web:` line): webhooks on the event
loop, everything else through `create_app()`, the Flask application factory.
"""

from __future__ import annotations

import sys

from flask import Flask
from redis import Redis

from app.config import ConfigError, WebSettings

# GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
MAX_PAYLOAD = 25 * 1024 * 1024


def web_settings() -> WebSettings:
    try:
        return WebSettings.load()
    except ConfigError as exc:
        # One line naming the variable, instead of a traceback from deep inside gunicorn.
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        # 3 is gunicorn's "worker failed to boot": the master stops instead of respawning.
        raise SystemExit(3) from None


def create_app(settings: WebSettings | None = None) -> Flask:
    settings = settings or web_settings()

    from app import health
    from app.logs import configure_logging
    from jobs.redact import redactor

    configure_logging(redactor.learn(settings))
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_PAYLOAD)
    app.extensions["redis"] = Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    app.register_blueprint(health.bp)
    return app


def create_service(settings: WebSettings | None = None):
    from app.service import create_service as create

    return create(settings)
