"""Setup mode: the pages that register the GitHub App, while the service has no credentials.

`GET /setup` builds the App's manifest (jobs/common/registration.py) and sends the person's
browser to GitHub with it; GitHub's redirect brings a code back to `/setup/callback`, which
turns it into credentials written into the env files; the browser then goes on to install the
App, and GitHub returns it to `/setup/installed`. "I already have an App" imports one instead.

Who may do this: the holder of the setup token (printed on the console, kept 0600 beside the env
files), carried from the console link into a cookie. The cookie is SameSite=Lax, so GitHub's
redirect (a top-level GET) carries it and no other site's form post does; the `state` of the
round trip is signed with the token. Once credentials exist every setup page is a 404: setup
cannot be re-entered from the network to overwrite them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request

from jobs.common.registration import (
    CredentialStore,
    ExistingApp,
    GitHubSite,
    Registration,
    SetupError,
    convert,
    import_existing,
    manifest,
    new_state,
    public_host,
    state_valid,
)
from jobs.common.settings import ENV_DIR, WebSettings

bp = Blueprint("setup", __name__)
COOKIE = "claudecluster_setup"
SITE_COOKIE = "claudecluster_setup_site"  # the GitHub site a registration went to


@dataclass
class SetupMode:
    """What the setup pages need: where the credentials go and this service's settings."""

    store: CredentialStore
    settings: WebSettings

    @classmethod
    def of(cls, settings: WebSettings, env_dir: Path = ENV_DIR) -> SetupMode:
        return cls(CredentialStore(env_dir), settings)

    @property
    def open(self) -> bool:
        return not self.store.registered()

    def form_key(self, token: str) -> str:
        return hmac.new(token.encode(), b"setup-form", hashlib.sha256).hexdigest()


def announce(settings: WebSettings, env_dir: Path = ENV_DIR) -> None:
    """Say on the console that the service is in setup mode, with the link that opens it."""
    mode = SetupMode.of(settings, env_dir)
    if not mode.open:
        return
    base = settings.public_url or f"http://localhost:{settings.port}"
    print(
        "setup: this service has no GitHub App yet. Open this link to register one:\n"
        f"setup:   {base}/setup?token={mode.store.setup_token()}\n"
        "setup: (or run `claudecluster setup`; webhooks are refused until then)",
        file=sys.stderr,
        flush=True,
    )


def _mode() -> SetupMode:
    return current_app.extensions["setup"]


def _message(title: str, message: str, status: int = 200, **extra: str) -> Response:
    kind = "ok" if status < 400 else "error"
    text = render_template("setup_message.html", title=title, message=message, kind=kind, **extra)
    return Response(text, status, content_type="text/html; charset=utf-8")


def _finished() -> Response:
    return _message(
        "Setup is finished",
        "This service already has its GitHub App; setup cannot run again from the network. "
        "To register another App, remove the credentials from the env files on the server.",
        404,
    )


def _base_url(settings: WebSettings) -> str:
    """Where the person's browser reaches this service: PUBLIC_URL, else the address it used
    (through a tunnel or proxy, the forwarded one)."""
    if settings.public_url:
        return settings.public_url
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    if host:
        return f"{proto or 'https'}://{host}"
    return request.host_url.rstrip("/")


def _token() -> str | None:
    """The setup token this browser holds, if it is the right one."""
    mode = _mode()
    presented = request.cookies.get(COOKIE)
    return presented if mode.store.token_matches(presented) else None


def _guarded() -> str:
    """The token, or the request ends: 404 once set up, 403 without the token."""
    if not _mode().open:
        abort(_finished())
    token = _token()
    if token is None:
        abort(
            _message(
                "Open the setup link",
                "Setup needs the link printed on this service's console (it carries a "
                "one-time setup token), or run `claudecluster setup` on the server.",
                403,
            )
        )
    return token


def _site(form_value: str | None) -> GitHubSite:
    settings = _mode().settings
    given = (form_value or "").strip() or settings.github_url
    same = given.rstrip("/") == settings.github_url.rstrip("/")
    return GitHubSite.at(given, settings.github_api_url if same else None)


@bp.after_request
def _headers(response: Response) -> Response:
    if request.path.startswith("/setup"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the token must not leak onward
        response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/setup")
def page():
    mode = _mode()
    if not mode.open:
        return _finished()
    presented = request.args.get("token")
    if presented is not None:
        if not mode.store.token_matches(presented):
            return _message("Wrong setup link", "This setup token is not this service's.", 403)
        # Into a cookie, and off the address bar (and out of any referrer).
        response = redirect("/setup", 303)
        response.set_cookie(COOKIE, presented, httponly=True, samesite="Lax", path="/setup")
        return response
    token = _guarded()
    settings = mode.settings
    base = _base_url(settings)
    public = settings.public_url or (base if public_host(base) else None)
    return render_template(
        "setup.html",
        base_url=base,
        port=settings.port,
        hook_url=f"{public}/webhooks" if public else None,
        name="ClaudeCluster",
        github_url=settings.github_url,
        form_key=mode.form_key(token),
        error=request.args.get("error"),
    )


def _check_form(token: str) -> None:
    if not hmac.compare_digest(request.form.get("form_key", ""), _mode().form_key(token)):
        abort(_message("Refused", "This form did not come from the setup page.", 403))


@bp.post("/setup/start")
def start():
    token = _guarded()
    _check_form(token)
    settings = _mode().settings
    try:
        site = _site(request.form.get("github_url"))
    except SetupError as exc:
        return _message("Cannot register the App", str(exc), 400)
    base = _base_url(settings)
    public = settings.public_url or (base if public_host(base) else None)
    built = manifest(base, public, request.form.get("name") or None)
    organization = (request.form.get("organization") or "").strip() or None
    nonce = secrets.token_urlsafe(12)
    bound = f"{site.web_url} {site.api_url}"
    body = render_template(
        "setup_continue.html",
        action=site.new_app_url(organization, new_state(token, bound)),
        manifest=json.dumps(built),
        nonce=nonce,
    )
    response = Response(body, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
        f"form-action {site.web_url}"
    )
    response.set_cookie(SITE_COOKIE, bound, httponly=True, samesite="Lax", path="/setup")
    return response


def _saved(registration: Registration) -> Response:
    try:
        _mode().store.save(registration)
    except SetupError as exc:
        return _message("Not saved", str(exc), 409)
    print(
        f"setup: App {registration.slug} registered; install it: {registration.install_url}",
        file=sys.stderr,
        flush=True,
    )
    return redirect(registration.install_url, 303)


@bp.get("/setup/callback")
def callback():
    token = _guarded()
    code, state = request.args.get("code", ""), request.args.get("state", "")
    bound = request.cookies.get(SITE_COOKIE, "")
    if not code or not state_valid(token, state, bound):
        return _message(
            "Refused",
            "This answer from GitHub does not belong to a setup started here (or it is over "
            "an hour old). Start the setup again.",
            400,
            link="/setup",
            link_text="Start again",
        )
    web_url, _, api_url = bound.partition(" ")
    try:
        # The API of the site the manifest went to (signed into the state with it).
        registration = convert(GitHubSite.at(web_url, api_url), code)
    except SetupError as exc:
        return _message("GitHub did not hand over the App", str(exc), 502)
    response = _saved(registration)
    response.delete_cookie(COOKIE, path="/setup")
    response.delete_cookie(SITE_COOKIE, path="/setup")
    return response


@bp.post("/setup/import")
def import_app():
    token = _guarded()
    _check_form(token)
    given = ExistingApp(
        app_id=request.form.get("app_id", ""),
        pem=request.form.get("private_key", ""),
        webhook_secret=request.form.get("webhook_secret", ""),
        client_id=request.form.get("client_id", ""),
        client_secret=request.form.get("client_secret", ""),
    )
    try:
        registration = import_existing(_site(request.form.get("github_url")), given)
    except SetupError as exc:
        return _message("Cannot import the App", str(exc), 400, link="/setup", link_text="Back")
    return _saved(registration)


@bp.get("/setup/installed")
def installed():
    """Where GitHub sends the person after installing the App: nothing secret, no token."""
    return _message(
        "ClaudeCluster is installed",
        "Comment `/claude <what to do>` on an issue or pull request of a repository you "
        "selected; the bot answers within seconds.",
        detail=(
            "Check the service any time with `claudecluster doctor`; the App's settings on "
            "GitHub hold its webhook URL and permissions."
        ),
    )
