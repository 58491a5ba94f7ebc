"""gunicorn settings, read from the same environment and `.env` as the app itself.

gunicorn loads this file from the working directory, so the Procfile's `web:` line stays plain.
"""

from pydantic import ValidationError

from app.config import Settings

try:
    _settings = Settings()
    bind = f"{_settings.host}:{_settings.port}"
    workers = _settings.web_concurrency
except ValidationError:
    # create_app() names the bad variable in one line; start with defaults until it does.
    bind = "0.0.0.0:8000"
    workers = 1

accesslog = "-"
# Deliveries must be answered within GitHub's 10 s; a worker stuck longer is recycled.
timeout = 30
