"""The GitHub App, as the worker authenticates: its key signs a JWT that GitHub must accept.

`GET /app` with that JWT proves the id and the key belong together; `GET /app/installations`
says whether anyone installed it yet (no installation: no webhook will ever come).
"""

from __future__ import annotations

from typing import Any

from githubkit.exception import GitHubException, RequestFailed

from jobs.cli.checks import Check
from jobs.common.settings import ConfigError, WorkerSettings, env_file
from jobs.github.client import app_client


def _refusal(exc: GitHubException) -> str:
    if isinstance(exc, RequestFailed):
        try:
            message = exc.response.json().get("message", "")
        except ValueError:
            message = ""
        return f"{exc.response.status_code} {message}".strip()
    return type(exc).__name__


def app_checks(settings: WorkerSettings) -> list[Check]:
    """The App line and the installations line (skipped when the App does not answer)."""
    app, problem = authenticated_app(settings)
    if app is None:
        return [
            Check("GitHub App", False, problem),
            Check.skipped("installations", "the App did not authenticate"),
        ]
    line = Check(
        "GitHub App",
        True,
        f"{app['slug']} (id {app['id']}) at {settings.github_api_url} accepts the key",
    )
    return [line, installations_check(settings, app)]


def authenticated_app(settings: WorkerSettings) -> tuple[dict[str, Any] | None, str]:
    where = env_file("worker")
    if not settings.github_app_id:
        return None, f"GITHUB_APP_ID is not set in {where}: set it, or run `claudecluster setup`"
    try:
        settings.require(("GITHUB_PRIVATE_KEY",))  # loads the key and checks it is one
    except ConfigError as exc:
        return None, f"{exc} (in {where})"
    try:
        client = app_client(settings)  # held: `.rest` keeps only a weak reference to it
        app = client.rest.apps.get_authenticated().json()
    except RequestFailed as exc:
        return None, (
            f"{settings.github_api_url} refused the App's JWT ({_refusal(exc)}): check that "
            f"GITHUB_APP_ID={settings.github_app_id} and the private key are the same App's, "
            "and that the key was not revoked"
        )
    except GitHubException as exc:  # no answer at all: the address, not the key
        return None, (
            f"{settings.github_api_url} does not answer ({_refusal(exc)}): check GITHUB_API_URL "
            "and that this machine can reach it"
        )
    except (ValueError, TypeError) as exc:  # a key that loads but cannot sign RS256
        return None, f"no JWT could be signed with the private key ({type(exc).__name__})"
    if app.get("id") != settings.github_app_id:
        return None, f"GitHub answered for App {app.get('id')}, not {settings.github_app_id}"
    return app, ""


def installations_check(settings: WorkerSettings, app: dict[str, Any]) -> Check:
    install = f"install the App: {app.get('html_url', '')}/installations/new"
    try:
        client = app_client(settings)
        found = client.rest.apps.list_installations(per_page=100).json()
    except GitHubException as exc:
        return Check("installations", False, f"not listed ({_refusal(exc)})")
    if not found:
        return Check("installations", False, f"none: {install}")
    accounts = ", ".join(sorted(str(i.get("account", {}).get("login", "?")) for i in found))
    more = " or more" if len(found) == 100 else ""
    return Check("installations", True, f"{len(found)}{more} ({accounts})")
