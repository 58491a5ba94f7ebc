"""Prometheus series of every process, summed across processes (prometheus_client's multiprocess
mode, prometheus.github.io/client_python/multiprocess).

gunicorn runs several web workers and RQ forks a "horse" per session, so no process holds a
whole count: each writes its values to files in `PROMETHEUS_MULTIPROC_DIR`, and a scrape sums
the files of its role (`exposition`). `prepare` runs first in each role's process, before any
series is made: it sets and empties the directory (a restarted process must not count twice).

A worker's horses share one set of files, named after the worker (`horse_identity`): one horse
runs at a time, and each continues the counts of the one before, so a long-lived worker keeps a
few files instead of a set per session. The live gauges of a finished horse are dropped
(`process_ended`), so a horse killed mid-run leaves no sandbox counted as running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds to hours: a refused session ends in a second, a long one takes the whole timeout.
SECONDS_TO_HOURS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)

# The Usage fields of the gateway's report (jobs/gateway/proxy.py), by the `kind` they count as.
TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_write": "cache_creation_input_tokens",
    "cache_read": "cache_read_input_tokens",
}

_horses_of: int | None = None  # the worker whose forked children are its horses
_private: Path | None = None  # the directory `prepare` made, for `discard`


def horse_identity(worker_pid: int) -> str:
    return f"{worker_pid}-horse"


def _identity() -> str:
    pid = os.getpid()
    if _horses_of is not None and pid != _horses_of:
        return horse_identity(_horses_of)
    return str(pid)


def prepare(role: str, forks_horses: bool = False) -> Path:
    """This process's metrics directory, set in the environment and emptied: the one given in
    PROMETHEUS_MULTIPROC_DIR (one per process role and host), else a new private one.

    Only the `.db` files prometheus_client writes are removed, whatever the directory holds.
    `forks_horses`: this is an RQ worker, whose children share the files of `horse_identity`.
    """
    global _horses_of, _private
    if series.cache_info().currsize or web_series.cache_info().currsize:
        raise RuntimeError("metrics.prepare() must run before the first series is made")
    given = os.environ.get(MULTIPROC_DIR)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix=f"claudecluster-{role}-"))
    _private = None if given else directory
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_DIR] = str(directory)
    _horses_of = os.getpid() if forks_horses else None
    # The storage class is chosen when prometheus_client is imported; the directory may only be
    # known now, and the identity is ours. Series are made after this (`series()`).
    values.ValueClass = values.MultiProcessValue(_identity)
    if forks_horses:
        series().sandboxes_running.set(0)  # the worker's own 0: the series exists while idle
    return directory


def discard() -> None:
    """As the role's process exits: remove the directory `prepare` made for it, if it did."""
    if _private is not None:
        shutil.rmtree(_private, ignore_errors=True)


def process_ended(identity: int | str) -> None:
    """Drop a finished process's live gauges (gunicorn's child_exit, a worker's ended horse)."""
    if os.environ.get(MULTIPROC_DIR):
        mark_process_dead(identity)


def horse_ended() -> None:
    """In the worker, once its horse has exited (killed or not)."""
    process_ended(horse_identity(os.getpid()))


@dataclass(frozen=True)
class WebSeries:
    deliveries: Counter


@cache
def web_series() -> WebSeries:
    """The web's series, made once per process on first use (after `prepare`)."""
    return WebSeries(
        deliveries=Counter(
            "claudecluster_deliveries",
            "Webhook deliveries answered by the web, by event and HTTP status",
            ["event", "status"],
        )
    )


@dataclass(frozen=True)
class Series:
    """The worker's series (a role makes only its own: a scrape shows no other role's zeros)."""

    sessions: Counter
    session_seconds: Histogram
    queue_wait_seconds: Histogram
    model_cost_usd: Counter
    model_tokens: Counter
    gateway_refusals: Counter
    sandboxes_running: Gauge
    rate_limit_remaining: Gauge


@cache
def series() -> Series:
    """The worker's series, made once per process on first use (after `prepare`)."""
    return Series(
        sessions=Counter(
            "claudecluster_sessions", "Sessions ended, by mode and outcome", ["mode", "outcome"]
        ),
        session_seconds=Histogram(
            "claudecluster_session_duration_seconds",
            "From a session's start on a worker to its end",
            ["mode"],
            buckets=SECONDS_TO_HOURS,
        ),
        queue_wait_seconds=Histogram(
            "claudecluster_queue_wait_seconds",
            "From a session's enqueueing to its start on a worker",
            buckets=SECONDS_TO_HOURS,
        ),
        model_cost_usd=Counter(
            "claudecluster_model_cost_usd", "Model cost the gateway estimated, in US dollars"
        ),
        model_tokens=Counter(
            "claudecluster_model_tokens",
            "Model tokens the gateway counted, by kind (input, output, cache_write, cache_read)",
            ["kind"],
        ),
        gateway_refusals=Counter(
            "claudecluster_gateway_refusals",
            "Model requests the gateway refused, by error type (as reported at session end)",
            ["kind"],
        ),
        sandboxes_running=Gauge(
            "claudecluster_sandboxes_running",
            "Sandbox containers running now",
            multiprocess_mode="livesum",
        ),
        rate_limit_remaining=Gauge(
            "claudecluster_github_rate_limit_remaining",
            "GitHub's X-RateLimit-Remaining, as last seen, by installation and resource",
            ["installation", "resource"],
            multiprocess_mode="mostrecent",
        ),
    )


def record_session(mode: str, outcome: str, seconds: float) -> None:
    s = series()
    s.sessions.labels(mode, outcome).inc()
    s.session_seconds.labels(mode).observe(max(seconds, 0.0))


def record_usage(usage: Mapping[str, object]) -> None:
    """What the gateway reported when a session's gateway closed (`Usage.as_dict()`)."""
    s = series()
    cost = usage.get("cost_usd")
    if isinstance(cost, int | float) and cost > 0:
        s.model_cost_usd.inc(cost)
    for kind, field in TOKEN_KINDS.items():
        count = usage.get(field)
        if isinstance(count, int) and count > 0:
            s.model_tokens.labels(kind).inc(count)
    refused = usage.get("refused")
    for kind, count in refused.items() if isinstance(refused, dict) else ():
        if isinstance(count, int) and count > 0:
            s.gateway_refusals.labels(str(kind)[:40]).inc(count)


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text a scrape gets: this role's series summed over its processes' files (a fresh
    registry each time, as the files change), then `extra` (values read at scrape time)."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_DIR):
        MultiProcessCollector(registry)
        text = b""
    else:  # a single process (a test's in-process app): its own registry is the whole count
        text = generate_latest(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return text + generate_latest(registry)
