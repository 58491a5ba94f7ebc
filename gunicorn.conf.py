"""gunicorn settings, read from the same environment and `.env` as the app itself.

gunicorn loads this file from the working directory, so the Procfile's `web:` line stays plain.
Flags in GUNICORN_CMD_ARGS override what is set here, e.g. `--threads 32` or `--access-logfile -`.
docs/reliability.md ("Load") has the measurements behind these choices.
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

# Threads, not one delivery at a time per process: a delivery spends much of its life waiting
# (on Redis, on the client), and a sync worker holds its whole process meanwhile; on a busy machine
# every wake-up waits for a CPU too. Threads wait side by side, and can keep connections alive.
worker_class = "gthread"
threads = 16
# No access log by default: GitHub's delivery log already shows every delivery with its answer,
# and the app logs each queued session and each refusal. A line per request cost 8-11% of the
# front door's CPU under load; `GUNICORN_CMD_ARGS="--access-logfile -"` turns it back on.
accesslog = None
# Deliveries must be answered within GitHub's 10 s; a worker stuck longer is recycled.
timeout = 30
