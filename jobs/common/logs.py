"""Logging for every process: stdlib `logging`, with every record passed through the redactor.

`LOG_FORMAT=json` writes one JSON object per line (python-json-logger) for log shippers; each
line carries the `delivery_id` and `session_id` it belongs to where they are known, set for a
block of work with `log_ids` (a context variable: each delivery's task and each session's
horse has its own).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from jobs.common.redact import Redactor, redactor

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A tuple of (name, id) pairs: immutable, so a block's ids never leak into another's.
_ids: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("log_ids", default=())


@contextlib.contextmanager
def log_ids(delivery: str | None = None, session: str | None = None) -> Iterator[None]:
    """Every record logged in the block carries these ids (added to those already set)."""
    known = {"delivery_id": delivery, "session_id": session}
    merged = dict(_ids.get()) | {name: value for name, value in known.items() if value}
    token = _ids.set(tuple(merged.items()))
    try:
        yield
    finally:
        _ids.reset(token)


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for name, value in _ids.get():
            setattr(record, name, self.redactor(value))
        return True


class RedactedJson(JsonFormatter):
    """JSON lines whose every text value is redacted, those passed as a logger's `extra` too
    (the filter redacts only the message and the traceback)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        self.redactor = redactor

    def process_log_record(self, log_data: dict) -> dict:
        return {k: self.redactor(v) if isinstance(v, str) else v for k, v in log_data.items()}


def configure_logging(
    redactor: Redactor, level: int = logging.INFO, log_format: str = "text"
) -> None:
    """Log to stderr, redacted; `log_format` "json" for one JSON object per line."""
    handler = logging.StreamHandler()
    json_lines = log_format == "json"
    formatter = RedactedJson(redactor) if json_lines else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def redacted_json() -> RedactedJson:
    """The formatter gunicorn's logging config names (`gunicorn_json_config`)."""
    return RedactedJson(redactor)


def gunicorn_json_config() -> dict:
    """gunicorn's `logconfig_dict` for LOG_FORMAT=json: its own lines and uvicorn's (which
    use gunicorn's handlers) as JSON objects too. The access log stays without a handler, as
    `accesslog = None` keeps it (gunicorn.conf.py); the app's records reach the root logger's
    handler, which `configure_logging` sets."""
    return {
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
        "formatters": {"generic": {"()": "jobs.common.logs.redacted_json"}},
    }
