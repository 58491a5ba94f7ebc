"""`claudecluster doctor`: one line per part of the service, ok or the fix.

Each role's settings are read as that role reads them (its env file, `.env`, the environment),
so what is checked is what the process would use. Exit status 1 when any check fails.
"""

from __future__ import annotations

import json
import sys

import click
from docker.errors import DockerException
from rich.console import Console
from rich.markup import escape

from jobs.cli import project
from jobs.cli.app_checks import app_checks
from jobs.cli.checks import (
    DOCKER_FIX,
    Check,
    docker_client,
    docker_where,
    foreign_secrets_check,
    parsed,
    public_url_check,
    redis_check,
    webhook_secret_check,
)
from jobs.cli.model_check import model_check
from jobs.cli.sandbox_checks import image_check, runtime_check
from jobs.common.settings import ROLES, SETTINGS, GatewaySettings, WebSettings, WorkerSettings

MARKS = {True: "[green]ok  [/green]", False: "[red]FAIL[/red]", None: "[dim]skip[/dim]"}


def docker_checks(settings: WorkerSettings) -> list[Check]:
    try:
        client = docker_client()
        version = client.version().get("Version", "?")
    except DockerException:
        return [
            Check("docker engine", False, f"not reachable at {docker_where()}: {DOCKER_FIX}"),
            Check.skipped("sandbox runtime", "no Docker engine"),
            Check.skipped("agent image", "no Docker engine"),
        ]
    try:
        runtime = runtime_check(settings, client)
        return [
            Check("docker engine", True, f"Docker {version} at {docker_where()}"),
            runtime,
            image_check(settings, client, bool(runtime.ok)),
        ]
    finally:
        client.close()


def worker_checks() -> list[Check]:
    settings = parsed(WorkerSettings)
    if isinstance(settings, str):
        return [Check("worker settings", False, settings)]
    assert isinstance(settings, WorkerSettings)
    return [*docker_checks(settings), redis_check(settings), *app_checks(settings)]


def web_checks() -> list[Check]:
    settings = parsed(WebSettings)
    if isinstance(settings, str):
        return [Check("web settings", False, settings)]
    assert isinstance(settings, WebSettings)
    checks = [webhook_secret_check(settings), public_url_check(settings)]
    worker = parsed(WorkerSettings)
    if isinstance(worker, str) or worker.redis_url != settings.redis_url:
        checks.insert(0, redis_check(settings))  # the web's queue is not the worker's
    return checks


def gateway_checks() -> list[Check]:
    settings = parsed(GatewaySettings)
    if isinstance(settings, str):
        return [Check("gateway settings", False, settings)]
    assert isinstance(settings, GatewaySettings)
    return [model_check(settings)]


def run_checks() -> list[Check]:
    checks = [*worker_checks(), *web_checks(), *gateway_checks()]
    return checks + [foreign_secrets_check(role, SETTINGS[role]) for role in ROLES]


def show(checks: list[Check]) -> None:
    console = Console(soft_wrap=True, highlight=False)
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "[yellow]warn[/yellow]" if check.ok and check.warning else MARKS[check.ok]
        console.print(f"{mark} {escape(check.name.ljust(width))}  {escape(check.text)}")
    failed = sum(check.ok is False for check in checks)
    console.print(f"{failed} of {len(checks)} checks failed" if failed else "all checks passed")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, as a list.")
def doctor(as_json: bool) -> None:
    """Check every part the service needs, and say how to fix what is wrong."""
    project.enter()
    checks = run_checks()
    if as_json:
        rows = [{"name": c.name, "ok": c.ok, "warning": c.warning, "text": c.text} for c in checks]
        click.echo(json.dumps(rows, indent=2))
    else:
        show(checks)
    sys.exit(1 if any(check.ok is False for check in checks) else 0)
