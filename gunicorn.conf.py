"""gunicorn settings, read from the same environment and `.env` as the app itself.

gunicorn loads this file from the working directory, so the Procfile's `web:` line stays plain.
Flags in GUNICORN_CMD_ARGS override what is set here, e.g. `--threads 32` or `--access-logfile -`.
docs/reliability.md ("Load") has the measurements behind these choices.
"""

from pydantic import ValidationError

from jobs.common import metrics
from jobs.common.logs import gunicorn_json_config
from jobs.common.settings import WebSettings, env_file

# Before any worker is forked: the workers' metrics files go to one directory, emptied now (a
# private one when PROMETHEUS_MULTIPROC_DIR is unset), and each scrape sums them.
metrics.prepare("web")

try:
    _settings = WebSettings(_env_file=(".env", str(env_file("web"))))
    bind = f"{_settings.host}:{_settings.port}"
    workers = _settings.web_concurrency
    if _settings.log_format == "json":  # gunicorn's and uvicorn's own lines as JSON too
        logconfig_dict = gunicorn_json_config()
except ValidationError:
    # create_app() names the bad variable in one line; start with defaults until it does.
    bind = "0.0.0.0:8000"
    workers = 1

# uvicorn's worker: an event loop (uvloop) and a C HTTP parser (httptools) per process. A
# delivery spends most of its life waiting on Redis; a loop waits on hundreds of them for a
# fraction of the CPU that gthread's threads spend, which is what held the front door under
# 1,000 deliveries/s on 2 cores (docs/reliability.md, "Load"). The app is ASGI for it.
worker_class = "uvicorn_worker.UvicornWorker"
# No access log by default: GitHub's delivery log already shows every delivery with its answer,
# and the app logs each queued session and each refusal. A line per request cost 8-11% of the
# front door's CPU under load; `GUNICORN_CMD_ARGS="--access-logfile -"` turns it back on.
accesslog = None
# Deliveries must be answered within GitHub's 10 s; a worker stuck longer is recycled.
timeout = 30


def on_starting(server) -> None:
    """Refuse to start, in one line naming the variable, before any worker is forked."""
    from app import web_settings
    from app.setup import announce

    announce(web_settings())


def child_exit(server, worker) -> None:
    """A worker is gone (recycled or crashed): its live gauges go with it."""
    metrics.process_ended(worker.pid)


def on_exit(server) -> None:
    metrics.discard()
