"""Signing in with GitHub through the App's OAuth client, for the GitHub stand-in.

``OAuthMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). It plays GitHub's web
application flow for a GitHub App (docs: "Generating a user access token for a GitHub App") as
a person's browser and the service meet it:

* ``GET /login/oauth/authorize?client_id=…&redirect_uri=…&state=…``: a page where the person
  (who types the login they are signed in as, the stand-in having no sessions of its own)
  clicks Authorize; an unknown client id, or a ``redirect_uri`` that is not one of the App's
  callback URLs (or a path below one), is refused on the page as GitHub refuses it;
* Authorize redirects to ``redirect_uri?code=…&state=…``; the code is good once, for ten
  minutes;
* ``POST /login/oauth/access_token`` (form or JSON) with ``client_id``, ``client_secret``,
  ``code`` (and ``redirect_uri`` if it was given) answers a user access token (``ghu_…``, eight
  hours) as JSON when asked for ``application/json``, else form-encoded; a wrong secret, a used
  or unknown code or another redirect_uri get GitHub's 200 with ``error`` and
  ``error_description``;
* the REST endpoints a user access token is for: ``GET /user`` and
  ``GET /user/installations/{installation_id}/repositories`` (the repositories of the
  installation the person has explicit access to, each with the person's ``permissions``).
  The installation endpoints refuse a user token as GitHub does (403).
"""

from __future__ import annotations

import html
import json
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from werkzeug.wrappers import Request, Response

from .github_objects import ApiError, Installation, Objects, Repo, User, now
from .github_pages import error_page, html_page

Handled = tuple[int, Any, dict[str, str]]

OAUTH_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/user"): ("get_authenticated_user", "users/users#get-the-authenticated-user"),
    ("GET", "/user/installations/{installation_id}/repositories"): (
        "list_user_installation_repos",
        "apps/installations#list-repositories-accessible-to-the-user-access-token",
    ),
}
CODE_LIFETIME = 600  # seconds, as GitHub's authorization codes
USER_TOKEN_LIFETIME = timedelta(hours=8)
_ALPHABET = string.ascii_letters + string.digits
_PERMISSIONS = {  # a role's ``permissions`` block on a repository
    "admin": ("admin", "maintain", "push", "triage", "pull"),
    "maintain": ("maintain", "push", "triage", "pull"),
    "write": ("push", "triage", "pull"),
    "triage": ("triage", "pull"),
    "read": ("pull",),
}


@dataclass
class UserToken:
    token: str
    user: User
    expires_at: datetime
    revoked: bool = False


@dataclass
class Grant:
    """An authorization code, until it is exchanged."""

    user: User
    redirect_uri: str | None
    created: float = field(default_factory=time.monotonic)
    used: bool = False


def _error(description: str) -> Response:
    return error_page("Authorization failed", description, 400)


class OAuthMixin:
    """The OAuth web flow and the user token's endpoints (see the module docstring)."""

    _lock: threading.RLock
    _app: dict[str, Any]
    _installations: dict[int, Installation]
    _repos: dict[str, Repo]
    _users: dict[str, User]
    app_client_id: str
    objects: Objects
    api_url: str
    _page: Any
    _role: Any

    def _init_oauth(self) -> None:
        self.app_client_secret = secrets.token_hex(20)
        # Where the App's OAuth client may send the person back (a manifest's callback_urls).
        self.app_callback_urls: list[str] = []
        self._grants: dict[str, Grant] = {}
        self._user_tokens: dict[str, UserToken] = {}
        self.token_exchanges: list[dict[str, Any]] = []  # what each exchange asked, answered

    # ------------------------------------------------------------------ test helpers

    def user_token(self, login: str) -> str:
        """A user access token for ``login``, as the flow would hand it out."""
        with self._lock:
            return self._issue_user_token(self._users[login.lower()])

    def user_token_info(self, value: str) -> UserToken | None:
        return self._user_tokens.get(value)

    # ------------------------------------------------------------------ browser pages

    def _oauth_page(self, request: Request) -> Response | None:
        if request.path == "/login/oauth/authorize":
            if request.method == "POST":
                return self._authorize(request)
            return self._authorize_form(request)
        if request.path == "/login/oauth/access_token" and request.method == "POST":
            return self._exchange(request)
        return None

    def _redirect_problem(self, client_id: str, redirect_uri: str | None) -> str:
        if client_id != self.app_client_id:
            return "The client_id is not associated with any application."
        if not self.app_callback_urls:
            return "The redirect_uri MUST match the registered callback URL for this application."
        if redirect_uri is None:
            return ""
        given = urlsplit(redirect_uri)
        for callback in self.app_callback_urls:
            known = urlsplit(callback)
            same_origin = (given.scheme, given.netloc) == (known.scheme, known.netloc)
            if same_origin and (given.path + "/").startswith(known.path.rstrip("/") + "/"):
                return ""
        return "The redirect_uri MUST match the registered callback URL for this application."

    def _authorize_form(self, request: Request) -> Response:
        args = request.args
        client_id, redirect_uri = args.get("client_id", ""), args.get("redirect_uri")
        if problem := self._redirect_problem(client_id, redirect_uri):
            return _error(problem)
        hidden = "".join(
            f"<input type='hidden' name='{name}' value='{html.escape(args.get(name, ''), True)}'>"
            for name in ("client_id", "redirect_uri", "state")
            if name in args
        )
        body = (
            f"<p>{html.escape(str(self._app['name']))} by "
            f"{html.escape(self._app['owner'].login)} would like to verify your identity and "
            "know which resources you can access.</p>"
            "<form method='post' action='/login/oauth/authorize'>"
            "<label>Signed in as <input name='login' id='login'></label>"
            f"{hidden}<button type='submit' id='authorize'>Authorize</button></form>"
        )
        return html_page(f"Authorize {self._app['name']}", body)

    def _authorize(self, request: Request) -> Response:
        form = request.form
        client_id, redirect_uri = form.get("client_id", ""), form.get("redirect_uri")
        if problem := self._redirect_problem(client_id, redirect_uri):
            return _error(problem)
        with self._lock:
            user = self._users.get(form.get("login", "").strip().lower())
            if user is None or user.type != "User":
                return _error("Incorrect username.")
            code = "".join(secrets.choice(_ALPHABET) for _ in range(20))
            self._grants[code] = Grant(user, redirect_uri)
        target = redirect_uri or self.app_callback_urls[0]
        query = urlencode({"code": code, **({"state": form["state"]} if "state" in form else {})})
        return Response(status=302, headers={"Location": f"{target}?{query}"})

    def _exchange(self, request: Request) -> Response:
        if request.is_json:
            asked = request.get_json(silent=True) or {}
        else:
            asked = {**request.args, **request.form}
        answer = self._exchanged(asked)
        self.token_exchanges.append(
            {"client_id": asked.get("client_id"), "code": asked.get("code"), **answer}
        )
        if "application/json" in request.headers.get("Accept", ""):
            return Response(json.dumps(answer), content_type="application/json; charset=utf-8")
        return Response(urlencode(answer), content_type="application/x-www-form-urlencoded")

    def _exchanged(self, asked: dict[str, Any]) -> dict[str, Any]:
        def error(code: str, description: str) -> dict[str, Any]:
            return {"error": code, "error_description": description}

        if asked.get("client_id") != self.app_client_id or not secrets.compare_digest(
            str(asked.get("client_secret", "")), self.app_client_secret
        ):
            return error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        with self._lock:
            grant = self._grants.get(str(asked.get("code", "")))
            expired = grant is not None and time.monotonic() - grant.created > CODE_LIFETIME
            if grant is None or grant.used or expired:
                return error("bad_verification_code", "The code passed is incorrect or expired.")
            grant.used = True  # once, whatever follows
            if grant.redirect_uri is not None and asked.get("redirect_uri") != grant.redirect_uri:
                return error(
                    "redirect_uri_mismatch",
                    "The redirect_uri MUST match the registered callback URL for this application.",
                )
            token = self._issue_user_token(grant.user)
        return {"access_token": token, "token_type": "bearer", "scope": ""}

    def _issue_user_token(self, user: User) -> str:
        value = "ghu_" + "".join(secrets.choice(_ALPHABET) for _ in range(36))
        self._user_tokens[value] = UserToken(value, user, now() + USER_TOKEN_LIFETIME)
        return value

    def _user_credential(self, value: str) -> UserToken | None:
        token = self._user_tokens.get(value)
        if token is None or token.revoked or token.expires_at <= now():
            return None
        return token

    # ------------------------------------------------------------------ REST

    @staticmethod
    def _need_user(auth: str | None, credential: Any) -> UserToken:
        if auth is None:
            raise ApiError(401, "Requires authentication")
        if auth != "user":
            raise ApiError(403, "Resource not accessible by integration")
        return credential

    def _h_get_authenticated_user(self, *, auth: str | None, credential: Any, **_: Any) -> Handled:
        user = self._need_user(auth, credential).user
        public = sum(1 for r in self._repos.values() if r.owner is user and not r.private)
        return 200, self.objects.public_user(user, public_repos=public), {}

    def _h_list_user_installation_repos(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        installation_id: int,
        **_: Any,
    ) -> Handled:
        user = self._need_user(auth, credential).user
        installation = self._installations.get(installation_id)
        if installation is None:
            raise ApiError(404, "Not Found")
        found = []
        for repo in sorted(self._repos.values(), key=lambda r: r.id):
            explicit = repo.owner is user or user.login.lower() in repo.collaborators
            role = self._role(repo, user)
            if repo.installation_id != installation_id or not explicit or role == "none":
                continue
            granted = _PERMISSIONS.get(role, ())
            permissions = {name: name in granted for name in _PERMISSIONS["admin"]}
            found.append(self.objects.repository(repo, permissions))
        url = f"{self.api_url}/user/installations/{installation_id}/repositories"
        chunk, links = self._page(request, found, url)
        body = {
            "total_count": len(found),
            "repository_selection": installation.repository_selection,
            "repositories": chunk,
        }
        return 200, body, links
