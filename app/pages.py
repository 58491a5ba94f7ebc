"""The Flask application factory: every page of the web process (health, setup, the dashboard).

Webhooks and the dashboard's live streams are answered before Flask, on the event loop
(app/service.py); the rest of the web process's paths go to `create_app()`.
"""

from __future__ import annotations

import sys

from flask import Flask
from redis import Redis

from app import dashboard, health, metrics, setup, signin
from jobs.common.logs import configure_logging
from jobs.common.redact import redactor
from jobs.common.settings import ConfigError, MissingSetting, WebSettings, waiting_for_config

# GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
MAX_PAYLOAD = 25 * 1024 * 1024


def web_settings() -> WebSettings:
    """The web's settings; in setup mode (see jobs.common.settings.WAIT_FOR_CONFIG) also
    without a webhook secret: then it serves /setup and refuses deliveries until setup ends."""
    try:
        return WebSettings.load()
    except MissingSetting as exc:
        if waiting_for_config():
            return WebSettings.parse()
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    except ConfigError as exc:
        # One line naming the variable, instead of a traceback from deep inside gunicorn.
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        # 3 is gunicorn's "worker failed to boot": the master stops instead of respawning.
        raise SystemExit(3) from None


def create_app(settings: WebSettings | None = None) -> Flask:
    settings = settings or web_settings()

    configure_logging(redactor.learn(settings), log_format=settings.log_format)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_PAYLOAD)
    app.extensions["redis"] = Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    app.extensions["setup"] = setup.SetupMode.of(settings)
    signin.configure(app, signin.SignIn(settings, app.extensions["redis"]))
    app.extensions["queue_depth"] = metrics.QueueDepth(app.extensions["redis"], settings.queue_name)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(setup.bp)
    app.register_blueprint(signin.bp)
    app.register_blueprint(dashboard.bp)
    return app
