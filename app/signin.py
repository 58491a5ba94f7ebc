"""Sign in with GitHub for the dashboard, through the App's OAuth client (setup wrote it).

`/login` sends the browser to GitHub's authorize page with a random `state` kept in the signed
cookie; `/login/callback` checks it, exchanges the code (POST /login/oauth/access_token with the
client id and secret) and asks GET /user who signed in. The person's token never leaves the
server: Redis keeps it under a hash of an opaque session id, and the cookie (signed with a key
derived from the client secret, HttpOnly, SameSite=Lax, Secure over https) holds only that id.
Each signed-in session has a CSRF token of its own for the dashboard's forms.

Who sees what: a person sees the sessions of repositories they can write to, as GitHub answers
their token (GET /user/installations/{id}/repositories lists the installation's repositories
the person has explicit access to, with their permissions), cached for a minute;
DASHBOARD_ADMINS see all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

import httpx
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from redis import Redis

from jobs.common.history import SessionRecord
from jobs.common.registration import GitHubSite
from jobs.common.settings import WebSettings

log = logging.getLogger(__name__)
bp = Blueprint("signin", __name__)

SIGNED_IN_FOR = timedelta(hours=8)  # as long as GitHub's user access tokens last
ACCESS_CACHE = 60  # seconds a person's repositories are trusted before GitHub is asked again
WRITE = ("admin", "maintain", "push")
API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class SignInFailed(Exception):
    """GitHub did not hand out a token or an identity; the message says why, without either."""


def person_key(sid: str) -> str:
    return f"claudecluster:web-session:{hashlib.sha256(sid.encode()).hexdigest()}"


@dataclass(frozen=True)
class Person:
    sid: str
    login: str
    token: str
    csrf: str
    admin: bool

    def __repr__(self) -> str:  # never the token
        return f"Person(login={self.login!r}, admin={self.admin})"


class SignIn:
    """The App's OAuth client and the signed-in people, in the web's Redis."""

    def __init__(self, settings: WebSettings, redis: Redis) -> None:
        self.settings, self.redis = settings, redis

    def current(self) -> WebSettings:
        """The settings; re-read while setup has not yet written the OAuth client."""
        if not self.configured(self.settings):
            parsed = WebSettings.parse()
            if self.configured(parsed):
                self.settings = parsed
        return self.settings

    @staticmethod
    def configured(settings: WebSettings) -> bool:
        return bool(settings.github_client_id and settings.github_client_secret)

    @property
    def site(self) -> GitHubSite:
        settings = self.current()
        return GitHubSite.at(settings.github_url, settings.github_api_url)

    def cookie_key(self) -> bytes | None:
        """The cookie's signing key, derived from the client secret (never shown anywhere)."""
        secret = self.current().github_client_secret
        if secret is None:
            return None
        return hmac.new(secret.get_secret_value().encode(), b"dashboard-cookie", "sha256").digest()

    # -- the OAuth exchange -------------------------------------------------------------

    def exchange(self, code: str, redirect_uri: str) -> str:
        """The person's user access token for `code`."""
        settings = self.current()
        secret = settings.github_client_secret
        form = {
            "client_id": settings.github_client_id or "",
            "client_secret": secret.get_secret_value() if secret else "",
            "code": code,
            "redirect_uri": redirect_uri,
        }
        try:
            reply = httpx.post(
                f"{self.site.web_url}/login/oauth/access_token",
                data=form,
                headers={"Accept": "application/json"},
                timeout=10,
            )
            answer = reply.json() if reply.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInFailed(f"GitHub could not be reached ({type(exc).__name__})") from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise SignInFailed(f"GitHub refused the sign-in ({error or reply.status_code})")
        return token

    def github_get(self, token: str, path: str, params: dict | None = None) -> httpx.Response:
        headers = {**API_HEADERS, "Authorization": f"Bearer {token}"}
        return httpx.get(f"{self.site.api_url}{path}", headers=headers, params=params, timeout=10)

    def identify(self, token: str) -> str:
        try:
            reply = self.github_get(token, "/user")
        except httpx.HTTPError as exc:
            raise SignInFailed(f"GitHub could not be reached ({type(exc).__name__})") from None
        try:
            login = reply.json().get("login") if reply.status_code == 200 else None
        except (ValueError, AttributeError):
            login = None
        if not isinstance(login, str):
            raise SignInFailed(f"GitHub did not say who signed in ({reply.status_code})")
        return login

    # -- signed-in people ---------------------------------------------------------------

    def remember(self, login: str, token: str) -> str:
        sid = secrets.token_urlsafe(32)
        fields = {"login": login, "token": token, "csrf": secrets.token_urlsafe(32)}
        self.redis.hset(person_key(sid), mapping=fields)
        self.redis.expire(person_key(sid), int(SIGNED_IN_FOR.total_seconds()))
        return sid

    def person(self, sid: object) -> Person | None:
        if not isinstance(sid, str) or not sid:
            return None
        raw = self.redis.hgetall(person_key(sid))
        if not raw:
            return None
        values = {k.decode(): v.decode() for k, v in raw.items()}
        admins = {a.lower() for a in self.current().dashboard_admins}
        login = values.get("login", "")
        token, csrf = values.get("token", ""), values.get("csrf", "")
        if not (login and token and csrf):
            return None
        return Person(sid, login, token, csrf, login.lower() in admins)

    def forget(self, sid: str) -> None:
        self.redis.delete(person_key(sid))

    def writable(self, person: Person, installation_id: int) -> set[str]:
        """Full names (lower-case) of the installation's repositories `person` can write to."""
        key = f"{person_key(person.sid)}:access:{installation_id}"
        if (cached := self.redis.get(key)) is not None:
            return set(json.loads(cached))
        names: set[str] = set()
        page = 1
        while True:
            path = f"/user/installations/{installation_id}/repositories"
            try:
                reply = self.github_get(person.token, path, {"per_page": 100, "page": page})
            except httpx.HTTPError as exc:
                log.warning("dashboard: access check failed (%s)", type(exc).__name__)
                return names  # not cached: asked again on the next page view
            try:
                body = reply.json() if reply.status_code == 200 else {}
            except ValueError:
                body = {}
            if not isinstance(body, dict) or not body:
                break  # no access to the installation (403/404), or the token expired
            for repo in body.get("repositories") or []:
                granted = repo.get("permissions") or {}
                if any(granted.get(level) for level in WRITE):
                    names.add(str(repo.get("full_name", "")).lower())
            if 'rel="next"' not in reply.headers.get("Link", ""):
                break
            page += 1
        self.redis.set(key, json.dumps(sorted(names)), ex=ACCESS_CACHE)
        return names

    def may_see(self, person: Person, record: SessionRecord) -> bool:
        if person.admin:
            return True
        return record.repo.lower() in self.writable(person, record.installation_id)


def configure(app: Flask, sign_in: SignIn) -> None:
    """Cookie settings for the dashboard's session cookie."""
    secure = (sign_in.settings.public_url or "").startswith("https://")
    app.config.update(
        SESSION_COOKIE_NAME="claudecluster_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=SIGNED_IN_FOR,
    )
    app.extensions["signin"] = sign_in
    app.session_interface = KeyedSessions(sign_in)


class KeyedSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, its key derived from the OAuth client's secret each time: setup
    may write the client while the service runs, and the key follows it."""

    def __init__(self, sign_in: SignIn) -> None:
        self.sign_in = sign_in

    def get_signing_serializer(self, app: Flask):
        app.secret_key = self.sign_in.cookie_key()
        return super().get_signing_serializer(app)


def sign_in() -> SignIn:
    return current_app.extensions["signin"]


def signed_in() -> Person | None:
    if current_app.secret_key is None:
        return None
    return sign_in().person(session.get("sid"))


def message(title: str, text: str, status: int = 200) -> Response:
    kind = "ok" if status < 400 else "error"
    page = render_template("setup_message.html", title=title, message=text, kind=kind)
    return Response(page, status, content_type="text/html; charset=utf-8")


def callback_url() -> str:
    base = sign_in().current().public_url or request.host_url.rstrip("/")
    return f"{base}/login/callback"


def safe_next(target: object) -> str:
    """Only a path of this site: never another site's address (an open redirect)."""
    text = str(target or "")
    if not text.startswith("/") or text.startswith("//") or "\\" in text:
        return url_for("dashboard.sessions")
    return text


@bp.get("/login")
def login():
    signin = sign_in()
    settings = signin.current()
    if not signin.configured(settings):
        return message(
            "Sign-in is not set up",
            "The dashboard signs people in with the GitHub App's OAuth client: set "
            "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET (setup writes them).",
            503,
        )
    state = secrets.token_urlsafe(24)
    session["oauth_state"] = state
    session["next"] = safe_next(request.args.get("next"))
    query = httpx.QueryParams(
        client_id=settings.github_client_id or "", redirect_uri=callback_url(), state=state
    )
    return redirect(f"{signin.site.web_url}/login/oauth/authorize?{query}")


@bp.get("/login/callback")
def callback():
    expected = session.pop("oauth_state", None)
    given = request.args.get("state", "")
    if not expected or not hmac.compare_digest(str(expected), given):
        return message("Sign-in failed", "The sign-in's state does not match: start again.", 400)
    code = request.args.get("code", "")
    if not code:
        # A person who clicks Cancel comes back with error=access_denied.
        said = request.args.get("error", "no code")[:100]
        return message("Sign-in failed", f"GitHub did not sign you in ({said}).", 400)
    signin = sign_in()
    try:
        token = signin.exchange(code, callback_url())
        login_name = signin.identify(token)
    except SignInFailed as exc:
        return message("Sign-in failed", str(exc), 502)
    target = safe_next(session.pop("next", None))
    session.clear()
    session.permanent = True
    session["sid"] = signin.remember(login_name, token)
    return redirect(target)


@bp.post("/logout")
def logout():
    person = signed_in()
    if person is None:
        return redirect(url_for("dashboard.sessions"))
    check_csrf(person)
    sign_in().forget(person.sid)
    session.clear()
    return redirect(url_for("dashboard.sessions"))


def check_csrf(person: Person) -> None:
    if not hmac.compare_digest(request.form.get("csrf", ""), person.csrf):
        abort(403, "the form's CSRF token is missing or wrong: reload the page and try again")
