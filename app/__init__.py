"""The ClaudeCluster web process.

`create_service()` is what gunicorn serves (the Procfile's `web:` line): webhooks on the event
loop (app/service.py), everything else through `create_app()`, the Flask application factory
(app/pages.py).
"""

from __future__ import annotations

from app.pages import MAX_PAYLOAD, create_app, web_settings
from app.service import create_service

__all__ = ["MAX_PAYLOAD", "create_app", "create_service", "web_settings"]
