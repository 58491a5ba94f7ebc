"""`claudecluster sessions ls | show ID | stop ID`: the service's sessions, from its Redis.

Reading is jobs/cli/known.py; this module prints (rich tables) and stops. Nothing secret is
shown: a session's queued values are plain (the token is never queued), and its result and
failure are redacted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobs.cli.known import KnownSession, RedisUnreachable, SessionStore, github_login
from jobs.common.settings import ConfigError, WorkerSettings
from jobs.github.tracking import took

EXIT_NOT_FOUND = 1  # unknown, or not running for a stop
EXIT_UNREACHABLE = 3


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a pipe or a file: whole rows, no wrapping
    return console


def _store() -> SessionStore:
    try:
        # Only REDIS_URL and QUEUE_NAME are read, where the worker reads them; no key needed.
        settings = WorkerSettings.parse()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    return SessionStore(settings)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _took(session: KnownSession) -> str:
    seconds = session.seconds
    return "—" if seconds is None else took(seconds)


def _login(value: str | None) -> str | None:
    try:
        return github_login(value) if value is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _unreachable(exc: RedisUnreachable) -> NoReturn:
    click.echo(f"claudecluster sessions: {exc}", err=True)
    raise SystemExit(EXIT_UNREACHABLE)


@click.group("sessions")
def sessions() -> None:
    """The sessions the service knows (REDIS_URL): list them, show one, stop one."""


@sessions.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def list_sessions(limit: int) -> None:
    """The newest sessions: state, repository, thread, requester, mode, times (UTC), outcome."""
    try:
        found = _store().all(limit)
    except RedisUnreachable as exc:
        _unreachable(exc)
    console = _console()
    if not found:
        console.print("No sessions are known.")
        return
    table = Table("Session", "State", "Repository", "Thread", "Requester", "Mode")
    for column in ("Enqueued", "Started", "Duration", "Outcome"):
        table.add_column(column)
    for session in found:
        request = session.request
        table.add_row(
            session.id,
            session.state,
            escape(request.repo) if request else "?",
            session.thread,
            escape(request.requester) if request else "?",
            str(request.mode) if request else "?",
            _when(session.job.enqueued_at),
            _when(session.job.started_at),
            _took(session),
            escape(str(session.outcome().get("status", ""))),
        )
    console.print(table)


@sessions.command("show")
@click.argument("session_id")
def show_session(session_id: str) -> None:
    """One session's request, times and outcome (SESSION_ID or its delivery id)."""
    try:
        session = _store().find(session_id)
        if session is None:
            raise click.ClickException(f"unknown session {session_id}")
        outcome, failure = session.outcome(), session.failure()
    except RedisUnreachable as exc:
        _unreachable(exc)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    request, job = session.request, session.job
    rows = [("Session", session.id), ("State", session.state)]
    if request is not None:
        rows += [
            ("Repository", request.repo),
            ("Thread", session.thread),
            ("Requester", request.requester),
            ("Mode", str(request.mode)),
            ("Trigger", str(request.trigger)),
            ("Delivery", request.delivery_id),
            ("Instruction", request.instruction or "—"),
        ]
    rows += [
        ("Enqueued", _when(job.enqueued_at)),
        ("Started", _when(job.started_at)),
        ("Ended", _when(job.ended_at)),
        ("Duration", _took(session)),
        ("Worker", job.worker_name or "—"),
    ]
    rows += [(f"Outcome: {key}", str(value)) for key, value in outcome.items()]
    if failure:
        rows.append(("Failure", failure))
    for name, value in rows:
        table.add_row(name, escape(value))
    _console().print(table)


@sessions.command("stop")
@click.argument("session_id")
@click.option(
    "--as",
    "login",
    callback=lambda _ctx, _param, value: _login(value),
    help="Stop as this GitHub login (default: whoever started the session, who may always "
    "stop it); another login's permission is checked as for a `/claude stop` comment.",
)
def stop_session(session_id: str, login: str | None) -> None:
    """Stop a running session exactly as `/claude stop` does: nothing is pushed."""
    store = _store()
    try:
        session = store.find(session_id)
        if session is None:
            click.echo(f"Unknown session {session_id}: nothing to stop.", err=True)
            raise SystemExit(EXIT_NOT_FOUND)
        if session.state not in ("running", "waiting", "stopping"):
            click.echo(f"Session {session.id} is not running ({session.state}): nothing to stop.")
            raise SystemExit(EXIT_NOT_FOUND)
        if session.request is None:
            raise click.ClickException(f"session {session.id} has no request to stop it by")
        who = login or session.request.requester
        store.request_stop(session, who)
    except RedisUnreachable as exc:
        _unreachable(exc)
    click.echo(
        f"Asked session {session.id} to stop, as @{who}. Its sandbox is stopped at its next "
        f"check (every {store.settings.sandbox_check_interval:g}s); nothing is pushed, and its "
        "tracking comment says who stopped it."
    )
