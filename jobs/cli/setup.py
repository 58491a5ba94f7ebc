"""`claudecluster setup`: register the GitHub App from the terminal, or import one.

With the service running in setup mode it prints the setup link (the token's page). Without
it, it starts the web alone in setup mode on the configured port, prints the link (and opens a
browser where there is one), and waits until GitHub's answer has been written; the web is the
same code either way, so there is one manifest flow. `--app-id` with `--private-key` imports an
App registered by hand instead, checked with GitHub first: the way a deployment whose web
cannot write the worker's env file (compose, Kubernetes) is set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

import click
import httpx
from dotenv import dotenv_values
from rich.console import Console

from jobs.common.registration import (
    CredentialStore,
    ExistingApp,
    GitHubSite,
    SetupError,
    import_existing,
)
from jobs.common.settings import ENV_DIR, WAIT_FOR_CONFIG, ConfigError, WebSettings

ROOT = Path(__file__).resolve().parents[2]
console = Console(stderr=True, highlight=False)


def _settings() -> WebSettings:
    try:
        return WebSettings.parse()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _install_hint(store: CredentialStore) -> str:
    url = dotenv_values(store.env_dir / "web.env").get("GITHUB_APP_URL")
    return f"install it: {url}/installations/new" if url else "install it from its page on GitHub"


def _service_in_setup_mode(port: int) -> bool:
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return "setup" in health


def _run_web(settings: WebSettings, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        f"{settings.host}:{port}",
        "--workers",
        "1",
        "app:create_service()",
    ]
    env = {**os.environ, WAIT_FOR_CONFIG: "1", "PORT": str(port)}
    return subprocess.Popen(
        command, cwd=os.getcwd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _import(store: CredentialStore, settings: WebSettings, app_id: str, key: Path) -> None:
    secret = os.environ.get("GITHUB_WEBHOOK_SECRET") or click.prompt(
        "The App's webhook secret", hide_input=True
    )
    given = ExistingApp(app_id, key.read_text(), secret)
    try:
        site = GitHubSite.at(settings.github_url, settings.github_api_url)
        registration = import_existing(site, given)
        store.save(registration)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"setup: App {registration.slug} imported; {_install_hint(store)}")


def _wait_for_registration(store: CredentialStore, web: subprocess.Popen | None) -> None:
    with console.status("waiting for GitHub's answer (register the App in the browser)…"):
        while not store.registered():
            if web is not None and web.poll() is not None:
                error = web.stderr.read().decode(errors="replace") if web.stderr else ""
                raise click.ClickException(f"the setup web stopped:\n{error[-2000:]}")
            time.sleep(0.5)


@click.command()
@click.option("--port", type=int, help="Port for the setup pages (default: PORT, 8000).")
@click.option("--no-browser", is_flag=True, help="Print the link; do not open a browser.")
@click.option("--app-id", help="Import an existing App: its ID …")
@click.option(
    "--private-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="… and its private key file (.pem). The webhook secret is asked for.",
)
def setup(port: int | None, no_browser: bool, app_id: str | None, private_key: Path | None) -> None:
    """Register the GitHub App (GitHub's manifest flow), or import one you have."""
    store, settings = CredentialStore(ENV_DIR), _settings()
    if store.registered():
        console.print(
            f"setup: already done: the App's credentials are in {ENV_DIR}. "
            "`claudecluster doctor` checks them."
        )
        return
    if app_id or private_key:
        if not (app_id and private_key):
            raise click.UsageError("--app-id and --private-key go together")
        _import(store, settings, app_id, private_key)
        return
    port = port or settings.port
    base = settings.public_url or f"http://localhost:{port}"
    web = None if _service_in_setup_mode(port) else _run_web(settings, port)
    try:
        link = f"{base}/setup?token={store.setup_token()}"
        click.echo(f"Open this link to register the GitHub App:\n  {link}", err=False)
        if not no_browser:
            webbrowser.open(link)
        _wait_for_registration(store, web)
        time.sleep(1.0)  # let the web answer the browser's last redirect before it stops
    finally:
        if web is not None:
            web.terminate()
            web.wait(20)
    console.print(f"setup: the App is registered; {_install_hint(store)}")
