"""A real-HTTP stand-in for GitHub Enterprise Server, for tests.

``GitHubStandIn`` runs a threaded werkzeug server on 127.0.0.1 (free port) that serves

* the REST API under ``{url}/api/v3/…`` (the handful of endpoints ClaudeCluster uses), with
  GitHub App authentication: App JWTs (RS256, checked against the stand-in's own key pair),
  installation tokens minted exactly like GitHub (down-scoping by repository and permission,
  1 h expiry, revocation), and per-endpoint repository scope / permission checks;
* git smart HTTP at ``{url}/{owner}/{repo}.git/…`` through the real ``git http-backend``,
  authenticated like GitHub (Basic ``x-access-token:<installation token>``).

Everything the service under test does is recorded (``requests``, ``responses``,
``token_requests``, ``pushes``) so tests can assert on it and validate every response body
against GitHub's OpenAPI description (``tests/standins/openapi.py``).

Behaviour follows GHES in *private mode*: every REST call and every git operation needs
credentials, and a token only sees the repositories it was minted for.

The code is split by subject: this module holds the server, authentication, tokens,
repositories, contents and git over HTTP; ``github_issues.py`` issues, comments and
reactions; ``github_pulls.py`` pull requests (forks included), reviews and review comments;
``github_checks.py`` check runs and their buttons; ``github_actions.py`` workflow runs, jobs and
job logs (a 302 to a signed download); ``github_objects.py`` the state records and
the JSON GitHub sends; ``github_git.py`` the git plumbing (bare repositories, commits, diffs,
``git http-backend``); ``github_hooks.py`` the
App's webhook: deliveries POSTed to a real URL, their log, and redelivery through the REST API.

Answers that are not JSON (a pull request's diff, raw file content) are recorded with their
text as ``body``; ``RecordedResponse.media_type`` tells them apart.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import itertools
import json
import re
import secrets
import shutil
import string
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import github_git as gitops
from .github_actions import ACTIONS_ROUTES, ActionsMixin
from .github_checks import CHECK_ROUTES, CheckRunRecord, ChecksMixin
from .github_git import Push
from .github_hooks import HOOK_ROUTES, HookDelivery, HooksMixin
from .github_issues import ISSUE_ROUTES, IssuesMixin
from .github_manifest import MANIFEST_ROUTES, ManifestMixin
from .github_oauth import OAUTH_ROUTES, OAuthMixin
from .github_objects import (
    PERMISSION_LEVELS,
    ROLE_ORDER,
    ApiError,
    Comment,
    Ids,
    Installation,
    Issue,
    Objects,
    PullRequest,
    Reaction,
    Repo,
    Review,
    ReviewComment,
    Token,
    User,
    now,
)
from .github_pages import PagesMixin
from .github_pulls import PULL_ROUTES, PullRequestsMixin, RawBody

__all__ = [
    "ApiError",
    "CheckRunRecord",
    "GitHubStandIn",
    "HookDelivery",
    "Push",
    "RecordedRequest",
    "RecordedResponse",
    "TokenRequest",
]

GHES_VERSION = "3.19.0"
DOCS = "https://docs.github.com/enterprise-server@3.19/rest"
API_PREFIX = "/api/v3"
TOKEN_ALPHABET = string.ascii_letters + string.digits
RATE_LIMIT = 5000

DEFAULT_APP_PERMISSIONS = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
}

# (method, OpenAPI path template) -> handler name, documentation URL
ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/app"): ("get_app", "apps/apps#get-the-authenticated-app"),
    ("GET", "/app/installations"): (
        "list_installations",
        "apps/apps#list-installations-for-the-authenticated-app",
    ),
    ("POST", "/app/installations/{installation_id}/access_tokens"): (
        "create_access_token",
        "apps/apps#create-an-installation-access-token-for-an-app",
    ),
    ("DELETE", "/installation/token"): (
        "revoke_token_endpoint",
        "apps/installations#revoke-an-installation-access-token",
    ),
    ("GET", "/repos/{owner}/{repo}"): ("get_repo", "repos/repos#get-a-repository"),
    ("GET", "/repos/{owner}/{repo}/installation"): (
        "get_repo_installation",
        "apps/apps#get-a-repository-installation-for-the-authenticated-app",
    ),
    ("GET", "/repos/{owner}/{repo}/contents/{path}"): (
        "get_content",
        "repos/contents#get-repository-content",
    ),
    ("GET", "/users/{username}"): ("get_user", "users/users#get-a-user"),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"): (
        "get_collaborator_permission",
        "collaborators/collaborators#get-repository-permissions-for-a-user",
    ),
    **ISSUE_ROUTES,
    **PULL_ROUTES,
    **CHECK_ROUTES,
}
# The App webhook's delivery log (github_hooks.py). Kept apart from ROUTES, whose every entry
# tests/test_github_standin.py exercises; tests/test_redelivery.py exercises these.
# OAUTH_ROUTES (a user access token's endpoints): tests/test_signin.py exercises them.
# ACTIONS_ROUTES (workflow runs, jobs, logs): tests/test_github_actions_standin.py exercises them.
ALL_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    **ROUTES,
    **ACTIONS_ROUTES,
    **HOOK_ROUTES,
    **MANIFEST_ROUTES,
    **OAUTH_ROUTES,
}

_INT_PARAMS = {
    "installation_id",
    "issue_number",
    "comment_id",
    "pull_number",
    "review_id",
    "delivery_id",
    "check_run_id",
    "run_id",
    "job_id",
}


def _werkzeug_rule(template: str) -> str:
    def convert(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "path":  # a file path: slashes included
            return "<path:path>"
        return f"<int:{name}>" if name in _INT_PARAMS else f"<{name}>"

    return re.sub(r"\{(\w+)\}", convert, template)


_APP_IDS = itertools.count(1001)

RAW_MEDIA = re.compile(r"application/vnd\.github(?:\.v3)?\.raw")

GIT_PATH = re.compile(
    r"^/(?P<owner>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?"
    r"/(?P<rest>info/refs|git-upload-pack|git-receive-pack)$"
)


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    status: int
    json: Any
    auth: str | None  # "jwt" | "token" | "basic" | None
    headers: dict[str, str] = field(default_factory=dict)
    # When it was answered (recorded once handled): bench/session.py times a session's phases.
    at: float = field(default_factory=time.time)


@dataclass
class RecordedResponse:
    method: str
    template: str | None  # OpenAPI path template; None when no route matched
    path: str
    status: int
    body: Any  # decoded JSON; text for a diff or raw answer; None for an empty body
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def media_type(self) -> str | None:
        """``application/json``, ``application/vnd.github.diff`` …; None without a body."""
        content_type = self.headers.get("Content-Type")
        return content_type.split(";")[0].strip() if content_type else None


@dataclass
class TokenRequest:
    installation_id: int
    body: dict[str, Any]
    status: int
    token: str | None = None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: Any
    remaining: int


def _request_id() -> str:
    """Looks like GitHub's ``x-github-request-id`` (five hex groups)."""
    parts = (secrets.randbits(16), secrets.randbits(16), secrets.randbits(24), secrets.randbits(28))
    return ":".join(f"{p:X}" for p in parts) + f":{int(time.time()):X}"


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        pass


# --------------------------------------------------------------------------- the stand-in


@dataclass
class _Call:
    """One REST call as the stand-in handles it: who made it, with what, and what it answers."""

    request: Request
    template: str | None
    auth_kind: str | None = None
    rate_key: str | None = None
    payload: Any = None
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class GitHubStandIn(
    IssuesMixin,
    PullRequestsMixin,
    ChecksMixin,
    ActionsMixin,
    HooksMixin,
    ManifestMixin,
    OAuthMixin,
    PagesMixin,
):
    """GitHub Enterprise Server look-alike on 127.0.0.1. Use as a context manager.

    Issues and comments live in ``IssuesMixin`` (``github_issues.py``); pull requests, reviews
    and review comments in ``PullRequestsMixin`` (``github_pulls.py``); the App's webhook and
    its delivery log in ``HooksMixin`` (``github_hooks.py``)."""

    def __init__(
        self,
        *,
        app_id: int | None = None,
        app_slug: str = "claudecluster-test",
        app_name: str = "ClaudeCluster Test",
        app_owner: str = "claudecluster-admins",
        app_permissions: dict[str, str] | None = None,
        app_events: Iterable[str] = ("issue_comment", "issues", "pull_request"),
    ):
        # githubkit caches App JWTs and installation tokens in a process-wide memory cache keyed
        # by the app id (not the key, not the URL). A fresh id per stand-in keeps one test's
        # cached credentials from leaking into the next stand-in, which has a new key pair.
        self.app_id = app_id if app_id is not None else next(_APP_IDS)
        self.app_slug = app_slug
        self.app_client_id = f"Iv23li{hashlib.sha1(str(self.app_id).encode()).hexdigest()[:14]}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem: str = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        self._public_key = key.public_key()

        self._lock = threading.RLock()
        self._ids = Ids()
        self._users: dict[str, User] = {}  # lower-case login -> user
        self._installations: dict[int, Installation] = {}
        self._repos: dict[str, Repo] = {}  # lower-case full name -> repo
        self._issues: dict[tuple[str, int], Issue] = {}
        self._comments: dict[int, Comment] = {}
        self._reactions: list[Reaction] = []
        self._pulls: dict[tuple[str, int], PullRequest] = {}
        self._reviews: dict[int, Review] = {}
        self._review_comments: dict[int, ReviewComment] = {}
        self._check_runs: dict[int, CheckRunRecord] = {}
        self._tokens: dict[str, Token] = {}
        self._rate_used: dict[str, int] = {}
        self._faults: list[_Fault] = []

        self.requests: list[RecordedRequest] = []
        self.responses: list[RecordedResponse] = []
        self.token_requests: list[TokenRequest] = []
        self.pushes: list[Push] = []
        self.errors: list[str] = []  # tracebacks of stand-in bugs (answered with 500)
        self._init_hooks()
        self._init_manifest()
        self._init_oauth()
        self._init_actions()

        owner = self.add_user(app_owner, type="Organization")
        self.bot_user = self.add_user(f"{app_slug}[bot]", type="Bot")
        self._app = {
            "id": self.app_id,
            "slug": app_slug,
            "client_id": self.app_client_id,
            "name": app_name,
            "description": "Runs Claude Code on /claude comments (test instance)",
            "external_url": "https://claudecluster.example.test",
            "owner": owner,
            "permissions": dict(app_permissions or DEFAULT_APP_PERMISSIONS),
            "events": list(app_events),
            "created_at": now(),
        }

        self._tmp: Path | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.api_url = ""
        self._objects: Objects | None = None
        routes = [Rule(_werkzeug_rule(t), endpoint=t, methods=[m]) for (m, t) in ALL_ROUTES]
        self._map = Map(routes, strict_slashes=False, merge_slashes=False)

    # ------------------------------------------------------------------ lifecycle

    @property
    def bot_login(self) -> str:
        return self.bot_user.login

    def noreply_email(self, user: User) -> str:
        """The commit e-mail GitHub gives an account: ``{id}+{login}@users.noreply.{host}``."""
        host = self.url.split("://", 1)[-1].split(":", 1)[0] or "127.0.0.1"
        return f"{user.id}+{user.login}@users.noreply.{host}"

    @property
    def git_root(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("GitHubStandIn is not started")
        return self._tmp / "repositories"

    @property
    def _git_env(self) -> dict[str, str]:
        assert self._tmp is not None
        return gitops.git_env(self._tmp / "home")

    def start(self, port: int = 0, host: str = "127.0.0.1") -> GitHubStandIn:
        """`host`: the address it listens on and names in its URLs (a Docker bridge's gateway
        address for containers to reach it, as the compose test does)."""
        if self._server is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="github-standin-"))
        (self._tmp / "home").mkdir()
        self.git_root.mkdir()
        self._server = make_server(host, port, self, threaded=True, request_handler=_QuietHandler)
        self._server.daemon_threads = True
        port = self._server.server_port
        self.url = f"http://{host}:{port}"
        self.api_url = f"{self.url}{API_PREFIX}"
        self._objects = Objects(self.url, self._app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="github-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_hooks()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def objects(self) -> Objects:
        if self._objects is None:
            raise RuntimeError("GitHubStandIn is not started")
        return self._objects

    # ------------------------------------------------------------------ state builders

    def add_user(
        self,
        login: str,
        id: int | None = None,  # noqa: A002 - GitHub's field name
        type: str = "User",  # noqa: A002
        *,
        name: str | None = None,
        email: str | None = None,
    ) -> User:
        if type not in ("User", "Bot", "Organization"):
            raise ValueError(f"unknown account type {type!r}")
        with self._lock:
            existing = self._users.get(login.lower())
            if existing is not None:
                if id is not None and existing.id != id:
                    raise ValueError(f"user {login} already exists with id {existing.id}")
                return existing
            user = User(
                login=login,
                id=id if id is not None else self._ids.next("user"),
                type=type,
                name=name,
                email=email,
            )
            self._users[login.lower()] = user
            return user

    def add_installation(
        self,
        id: int,  # noqa: A002
        account_login: str,
        permissions: dict[str, str] | None = None,
        *,
        account_type: str = "Organization",
        repository_selection: str = "selected",
        events: Iterable[str] | None = None,
    ) -> Installation:
        perms = dict(permissions if permissions is not None else self._app["permissions"])
        perms.setdefault("metadata", "read")
        for name, level in perms.items():
            if level not in ("read", "write", "admin"):
                raise ValueError(f"bad level {level!r} for permission {name!r}")
        with self._lock:
            if id in self._installations:
                raise ValueError(f"installation {id} already exists")
            account = self.add_user(account_login, type=account_type)
            inst = Installation(
                id=id,
                account=account,
                permissions=perms,
                repository_selection=repository_selection,
                events=list(events if events is not None else self._app["events"]),
            )
            self._installations[id] = inst
            return inst

    def add_repo(
        self,
        full_name: str,
        installation_id: int,
        default_branch: str = "main",
        files: dict[str, str | bytes] | None = None,
        private: bool = False,
        *,
        description: str | None = None,
    ) -> Repo:
        """Create a bare repository (initial commit holding ``files``) owned by the
        installation's account and reachable by that installation's tokens."""
        owner_login, _, name = full_name.partition("/")
        if not owner_login or not name or "/" in name:
            raise ValueError(f"bad repository full name {full_name!r}")
        with self._lock:
            inst = self._installations.get(installation_id)
            if inst is None:
                raise ValueError(f"unknown installation {installation_id}")
            if inst.account.login.lower() != owner_login.lower():
                raise ValueError(
                    f"{full_name} is not owned by {inst.account.login}, the installation's account"
                )
            if full_name.lower() in self._repos:
                raise ValueError(f"repository {full_name} already exists")
            path = self.git_root / inst.account.login / f"{name}.git"
            gitops.init_bare_repo(
                path, default_branch, files or {"README.md": f"# {name}\n"}, self._git_env
            )
            repo = Repo(
                id=self._ids.next("repo"),
                owner=inst.account,
                name=name,
                installation_id=installation_id,
                default_branch=default_branch,
                private=private,
                path=path,
                description=description,
            )
            self._repos[full_name.lower()] = repo
            return repo

    def add_collaborator(self, full_name: str, login: str, role: str = "write") -> None:
        if role not in ROLE_ORDER:
            raise ValueError(f"unknown role {role!r} (one of {ROLE_ORDER})")
        with self._lock:
            repo = self._repo(full_name)
            user = self._users.get(login.lower()) or self.add_user(login)
            repo.collaborators[user.login.lower()] = role

    # ------------------------------------------------------------------ credentials for tests

    def app_jwt(
        self,
        *,
        iat: float | None = None,
        exp: float | None = None,
        iss: Any = None,
        key_pem: str | None = None,
    ) -> str:
        """An App JWT like githubkit makes (iat = now-60 s, exp = iat+10 min) unless overridden.

        Signed by hand (RS256) so that ``iss`` may be an int, which PyJWT refuses to encode."""
        issued = time.time() - 60 if iat is None else iat
        claims = {
            "iat": int(issued),
            "exp": int(issued + 600 if exp is None else exp),
            "iss": str(self.app_id) if iss is None else iss,
        }
        key = serialization.load_pem_private_key(
            (key_pem or self.private_key_pem).encode(), password=None
        )
        assert isinstance(key, rsa.RSAPrivateKey)

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing_input = (
            b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
            + "."
            + b64(json.dumps(claims).encode())
        )
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def mint_token(
        self,
        installation_id: int,
        repositories: Iterable[str] | None = None,
        permissions: dict[str, str] | None = None,
    ) -> str:
        """Mint an installation token directly (not recorded in ``token_requests``)."""
        body: dict[str, Any] = {}
        if repositories is not None:
            body["repositories"] = list(repositories)
        if permissions is not None:
            body["permissions"] = dict(permissions)
        with self._lock:
            token, _ = self._mint(installation_id, body)
        return token.token

    def expire_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].expires_at = now() - timedelta(seconds=1)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].revoked = True

    def token_info(self, token: str) -> Token:
        with self._lock:
            return copy.deepcopy(self._tokens[token])

    # ------------------------------------------------------------------ inspection

    def repo(self, full_name: str) -> Repo:
        with self._lock:
            return self._repo(full_name)

    def branches(self, full_name: str) -> dict[str, str]:
        return gitops.branches(self.repo(full_name).path, self._git_env)

    def read_file(self, full_name: str, ref: str, path: str) -> str | None:
        return gitops.read_file(self.repo(full_name).path, ref, path, self._git_env)

    def git(self, full_name: str, *args: str) -> str:
        """Run a read-only git command against the bare repository; return stdout."""
        proc = gitops.git(self.repo(full_name).path, *args, env=self._git_env)
        return proc.stdout.decode()

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose method matches (``"*"`` = any) and whose
        full path (e.g. ``/api/v3/repos/o/r/pulls``) matches ``path_regex`` (``re.search``)
        with ``status``. ``body`` defaults to a GitHub error object; a dict is sent as JSON,
        str/bytes as is. The request is not processed."""
        with self._lock:
            self._faults.append(
                _Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex),
                    status=status,
                    headers=dict(headers or {}),
                    body=body,
                    remaining=times,
                )
            )

    def clear_faults(self) -> None:
        """Forget the faults ``fail_next`` set that have not been used up."""
        with self._lock:
            self._faults.clear()

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.token_requests.clear()
            self.pushes.clear()

    # ------------------------------------------------------------------ internal lookups

    def _repo(self, full_name: str) -> Repo:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"unknown repository {full_name}")
        return repo

    def _author_association(self, repo: Repo, user: User) -> str:
        if user.login.lower() == repo.owner.login.lower():
            return "OWNER"
        role = repo.collaborators.get(user.login.lower())
        if role and role != "none":
            return "COLLABORATOR"
        return "NONE"

    def _role(self, repo: Repo, user: User) -> str:
        if user.login.lower() == repo.owner.login.lower():
            return "admin"
        role = repo.collaborators.get(user.login.lower())
        if role is not None:
            return role
        return "none" if repo.private else "read"

    @staticmethod
    def _repo_permissions(token: Token | None) -> dict[str, bool]:
        """The ``permissions`` block of a repository as seen through ``token``."""

        def has(name: str, level: str) -> bool:
            return token is not None and token.allows(name, level)

        push = has("contents", "write")
        return {
            "admin": has("administration", "write"),
            "maintain": False,
            "push": push,
            "triage": push or has("issues", "write") or has("pull_requests", "write"),
            "pull": True,
        }

    def _token_repos(self, token: Token) -> list[Repo]:
        if token.repository_ids is None:
            return [r for r in self._repos.values() if r.installation_id == token.installation_id]
        return [r for r in self._repos.values() if r.id in token.repository_ids]

    # ------------------------------------------------------------------ token minting

    def _mint(self, installation_id: int, body: dict[str, Any]) -> tuple[Token, list[Repo] | None]:
        inst = self._installations.get(installation_id)
        if inst is None:
            raise ApiError(404, "Not Found")
        names = body.get("repositories")
        ids = body.get("repository_ids")
        if names is not None and not isinstance(names, list):
            raise ApiError(
                422,
                "Invalid request.\n\nFor 'properties/repositories', "
                f"{json.dumps(names)} is not an array.",
            )
        if ids is not None and not isinstance(ids, list):
            raise ApiError(
                422,
                "Invalid request.\n\nFor 'properties/repository_ids', "
                f"{json.dumps(ids)} is not an array.",
            )
        installed = [r for r in self._repos.values() if r.installation_id == installation_id]
        selected = _selected_repos(installed, names or [], ids or []) if names or ids else None
        permissions = _granted_permissions(inst.permissions, body.get("permissions"))

        value = "ghs_" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(36))
        token = Token(
            token=value,
            installation_id=installation_id,
            repository_ids=None if selected is None else frozenset(r.id for r in selected),
            permissions=permissions,
            repository_selection="selected" if selected is not None else inst.repository_selection,
            expires_at=now() + timedelta(hours=1),
        )
        self._tokens[value] = token
        return token, selected

    # ------------------------------------------------------------------ WSGI entry point

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except Exception:  # a stand-in bug: make it loud
            trace = traceback.format_exc()
            self.errors.append(trace)
            response = Response(
                json.dumps({"message": "Server Error", "documentation_url": DOCS}),
                status=500,
                content_type="application/json; charset=utf-8",
            )
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        fault = self._take_fault(request.method, path)
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self._api(request, path[len(API_PREFIX) :] or "/", fault)
        git_match = GIT_PATH.match(path)
        if fault is not None:
            return self._fault_response(request, fault, template=None, api=False)
        if git_match:
            return self._git(request, git_match)
        page = (
            self._manifest_page(request)
            or self._oauth_page(request)
            or self._log_download(request)
            or self._browse_page(request)
        )
        if page is not None:
            self._record_request(request, page.status_code, None, None)
            return page
        self._record_request(request, 404, None, None)
        return Response("Not Found\n", status=404, content_type="text/plain; charset=utf-8")

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method.upper()) and fault.pattern.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ REST

    def _api(self, request: Request, api_path: str, fault: _Fault | None) -> Response:
        adapter = self._map.bind("standin", path_info=api_path)
        try:
            template, args = adapter.match(method=request.method)
        except HTTPException:
            template, args = None, {}
        if fault is not None:
            return self._fault_response(request, fault, template=template, api=True)
        doc = DOCS
        call = _Call(request, template)
        try:
            call.auth_kind, credential = self._authenticate(request)
            if isinstance(credential, Token):
                call.rate_key = f"installation:{credential.installation_id}"
            elif call.auth_kind == "user":
                call.rate_key = f"user:{credential.user.login}"
            elif call.auth_kind == "jwt":
                call.rate_key = "app"
            if template is None:
                raise ApiError(404, "Not Found")
            handler_name, doc_path = ALL_ROUTES[(request.method, template)]
            doc = f"{DOCS}/{doc_path}"
            call.payload = self._json_body(request)
            with self._lock:
                handler = getattr(self, f"_h_{handler_name}")
                call.status, call.body, call.headers = handler(
                    credential=credential,
                    auth=call.auth_kind,
                    payload=call.payload,
                    request=request,
                    **args,
                )
        except ApiError as exc:
            call.status = exc.status
            call.body = Objects.error(exc.message, doc, exc.status, exc.errors)
            call.headers = exc.headers
        return self._api_response(call)

    def _json_body(self, request: Request) -> Any:
        raw = request.get_data(cache=True)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "Problems parsing JSON") from exc

    def _authenticate(self, request: Request) -> tuple[str | None, Any]:
        header = request.headers.get("Authorization", "")
        if not header:
            return None, None
        scheme, _, value = header.partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ApiError(401, "Bad credentials") from exc
            _, _, value = decoded.partition(":")
            scheme = "token"
        if scheme not in ("bearer", "token"):
            raise ApiError(401, "Bad credentials")
        if value.count(".") == 2:
            return "jwt", self._verify_jwt(value)
        if value.startswith("ghu_"):
            if (user_token := self._user_credential(value)) is None:
                raise ApiError(401, "Bad credentials")
            return "user", user_token
        token = self._tokens.get(value)
        if token is None or token.revoked or token.expires_at <= now():
            raise ApiError(401, "Bad credentials")
        return "token", token

    def _verify_jwt(self, value: str) -> dict[str, Any]:
        undecodable = ApiError(401, "A JSON web token could not be decoded")
        try:
            header = jwt.get_unverified_header(value)
            if header.get("alg") != "RS256":
                raise undecodable
            claims = jwt.decode(
                value,
                self._public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_iss": False,
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise undecodable from exc
        moment = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or exp <= moment:
            raise ApiError(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the "
                "future time at which the assertion expires",
            )
        if not isinstance(iat, int | float) or iat > moment + 60:
            raise ApiError(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the "
                "assertion was issued",
            )
        if exp - moment > 600 + 30 or exp - iat > 600 + 60:
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims.get("iss")) not in (str(self.app_id), self.app_client_id):
            raise ApiError(401, "'Issuer' claim ('iss') must be an Integer")
        return claims

    def _api_response(self, call: _Call) -> Response:
        request, status, body = call.request, call.status, call.body
        out_headers = self._common_headers(request, call.rate_key)
        if isinstance(body, RawBody):  # a diff, a patch, raw file content
            data = body.data.encode() if isinstance(body.data, str) else body.data
            content_type = body.content_type
            out_headers["X-GitHub-Media-Type"] = f"github.v3; param={body.media_type}"
            recorded: Any = data.decode("utf-8", errors="replace")
        else:
            data = b"" if body is None else json.dumps(body).encode()
            content_type = "application/json; charset=utf-8"
            recorded = json.loads(data) if data else None
        out_headers.update(call.headers)
        if status == 200 and request.method == "GET" and data:
            out_headers["ETag"] = f'W/"{hashlib.sha256(data).hexdigest()}"'
            out_headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
        response = Response(
            data,
            status=status,
            headers=out_headers,
            content_type=content_type if data else None,
        )
        if not data:
            response.headers.pop("Content-Type", None)
        with self._lock:
            self.responses.append(
                RecordedResponse(
                    method=request.method,
                    template=call.template,
                    path=request.path,
                    status=status,
                    body=recorded if data else None,
                    headers=dict(response.headers),
                )
            )
        self._record_request(request, status, call.payload, call.auth_kind)
        return response

    def _common_headers(self, request: Request, rate_key: str | None = None) -> dict[str, str]:
        """Headers GitHub sends on every API response. ``rate_key`` names the rate-limit
        bucket (an installation, the app); by default the credential or the client address."""
        credential = request.headers.get("Authorization", "")
        if rate_key is None:
            rate_key = (
                hashlib.sha256(credential.encode()).hexdigest()
                if credential
                else f"ip:{request.remote_addr}"
            )
        with self._lock:
            used = self._rate_used.get(rate_key, 0) + 1
            self._rate_used[rate_key] = used
        limit = RATE_LIMIT if credential else 60
        window = int(time.time()) // 3600 * 3600 + 3600
        return {
            "Server": "GitHub.com",
            "X-GitHub-Request-Id": _request_id(),
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Api-Version-Selected": request.headers.get(
                "X-GitHub-Api-Version", "2022-11-28"
            ),
            "X-GitHub-Enterprise-Version": GHES_VERSION,
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(limit - used, 0)),
            "X-RateLimit-Reset": str(window),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Resource": "core",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "deny",
            "X-XSS-Protection": "0",
            "Referrer-Policy": "origin-when-cross-origin, strict-origin-when-cross-origin",
            "Content-Security-Policy": "default-src 'none'",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": (
                "ETag, Link, Location, Retry-After, X-GitHub-OTP, X-RateLimit-Limit, "
                "X-RateLimit-Remaining, X-RateLimit-Used, X-RateLimit-Resource, "
                "X-RateLimit-Reset, X-OAuth-Scopes, X-Accepted-OAuth-Scopes, X-Poll-Interval, "
                "X-GitHub-Media-Type, X-GitHub-SSO, X-GitHub-Request-Id, Deprecation, Sunset"
            ),
            "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP,Accept-Encoding, Accept, "
            "X-Requested-With",
        }

    def _record_request(
        self, request: Request, status: int, payload: Any, auth_kind: str | None
    ) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.query_string.decode(),
                    status=status,
                    json=payload,
                    auth=auth_kind,
                    headers={k: v for k, v in request.headers.items() if k != "Authorization"},
                )
            )

    def _fault_response(
        self, request: Request, fault: _Fault, template: str | None, api: bool
    ) -> Response:
        body = fault.body
        if body is None:
            reason = Response(status=fault.status).status.split(" ", 1)[-1]
            body = Objects.error(reason, DOCS, fault.status)
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
            content_type = "application/json; charset=utf-8"
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
            content_type = "text/plain; charset=utf-8"
        headers = self._common_headers(request) if api else {}
        headers.update(fault.headers)
        response = Response(data, status=fault.status, headers=headers, content_type=content_type)
        if api:
            try:
                decoded = json.loads(data) if data else None
            except ValueError:
                decoded = data.decode(errors="replace")
            with self._lock:
                self.responses.append(
                    RecordedResponse(
                        method=request.method,
                        template=template,
                        path=request.path,
                        status=fault.status,
                        body=decoded,
                        headers=dict(response.headers),
                    )
                )
        self._record_request(request, fault.status, None, None)
        return response

    # -------------------------------------------------------- REST: auth helpers

    @staticmethod
    def _need_jwt(auth: str | None) -> None:
        if auth != "jwt":
            raise ApiError(401, "A JSON web token could not be decoded")

    @staticmethod
    def _need_token(auth: str | None, credential: Any) -> Token:
        if auth is None:
            raise ApiError(401, "Requires authentication")
        if auth != "token":
            raise ApiError(403, "Resource not accessible by integration")
        return credential

    @staticmethod
    def _visible(token: Token, repo: Repo) -> bool:
        """Whether ``token`` reaches ``repo``: installed there, and within the token's scope."""
        return repo.installation_id == token.installation_id and (
            token.repository_ids is None or repo.id in token.repository_ids
        )

    def _scoped_repo(self, token: Token, owner: str, repo_name: str) -> Repo:
        repo = self._repos.get(f"{owner}/{repo_name}".lower())
        if repo is None or not self._visible(token, repo):
            raise ApiError(404, "Not Found")
        return repo

    @staticmethod
    def _need_permission(token: Token, *alternatives: tuple[str, str]) -> None:
        """Pass when the token holds any of ``(permission, level)``; else 403 like GitHub."""
        if any(token.allows(name, level) for name, level in alternatives):
            return
        # GitHub lists acceptable permission sets separated by "; "
        accepted = "; ".join(f"{name}={level}" for name, level in alternatives)
        raise ApiError(
            403,
            "Resource not accessible by integration",
            headers={"X-Accepted-GitHub-Permissions": accepted},
        )

    @staticmethod
    def _page(request: Request, items: list[Any], url: str) -> tuple[list[Any], dict[str, str]]:
        try:
            per_page = min(max(int(request.args.get("per_page", 30)), 1), 100)
            page = max(int(request.args.get("page", 1)), 1)
        except ValueError:
            per_page, page = 30, 1
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        params = {k: v for k, v in request.args.items() if k not in ("page", "per_page")}

        def link(number: int, rel: str) -> str:
            query = urlencode({**params, "per_page": per_page, "page": number})
            return f'<{url}?{query}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        return chunk, ({"Link": ", ".join(links)} if links else {})

    # -------------------------------------------------------- REST: app endpoints

    def _h_get_app(self, *, auth: str | None, **_: Any) -> tuple[int, Any, dict[str, str]]:
        self._need_jwt(auth)
        return 200, self.objects.integration(len(self._installations)), {}

    def _h_list_installations(
        self, *, auth: str | None, request: Request, **_: Any
    ) -> tuple[int, Any, dict[str, str]]:
        self._need_jwt(auth)
        found = [self.objects.installation(i) for i in self._installations.values()]
        chunk, links = self._page(request, found, f"{self.api_url}/app/installations")
        return 200, chunk, links

    def _h_create_access_token(
        self,
        *,
        auth: str | None,
        payload: Any,
        installation_id: int,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        self._need_jwt(auth)
        body = payload if payload is not None else {}
        record = TokenRequest(installation_id=installation_id, body=copy.deepcopy(body), status=0)
        self.token_requests.append(record)
        try:
            if not isinstance(body, dict):
                raise ApiError(422, "Invalid request.\n\nRequest body must be an object.")
            token, selected = self._mint(installation_id, body)
        except ApiError as exc:
            record.status = exc.status
            raise
        record.status = 201
        record.token = token.token
        perms = self._repo_permissions(token)
        return 201, self.objects.installation_token(token, selected, perms), {}

    def _h_revoke_token_endpoint(
        self, *, auth: str | None, credential: Any, **_: Any
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        token.revoked = True
        return 204, None, {}

    def _h_get_repo_installation(
        self, *, auth: str | None, owner: str, repo: str, **_: Any
    ) -> tuple[int, Any, dict[str, str]]:
        self._need_jwt(auth)
        found = self._repos.get(f"{owner}/{repo}".lower())
        if found is None or found.installation_id is None:
            raise ApiError(404, "Not Found")
        return 200, self.objects.installation(self._installations[found.installation_id]), {}

    # -------------------------------------------------------- REST: repositories & users

    def _h_get_repo(
        self, *, auth: str | None, credential: Any, owner: str, repo: str, **_: Any
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("metadata", "read"))
        open_issues = sum(
            1
            for (name, _n), i in self._issues.items()
            if name == found.full_name.lower() and i.state == "open"
        )
        body = self.objects.full_repository(found, self._repo_permissions(token), open_issues)
        return 200, body, {}

    def _h_get_content(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        path: str,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("contents", "read"))
        env = self._git_env
        ref = request.args.get("ref") or found.default_branch
        commit = gitops.rev_parse(found.path, ref, env)
        if commit is None:
            raise ApiError(404, f"No commit found for the ref {ref}")
        entry = gitops.tree_entry(found.path, commit, path, env)
        if entry is None:
            raise ApiError(404, "Not Found")
        kind = entry.content_type
        if kind == "dir":
            entries = gitops.list_tree(found.path, commit, entry.path, env)
            return 200, self.objects.content_directory(found, entries, ref), {}
        if kind == "submodule":
            raise ApiError(404, "Not Found")
        data = gitops.read_blob(found.path, entry.sha, env)
        if RAW_MEDIA.search(request.headers.get("Accept", "")):
            return 200, RawBody(data, "raw"), {}
        if kind == "symlink":
            target = data.decode("utf-8", errors="replace")
            return 200, self.objects.content_symlink(found, entry, ref, target), {}
        return 200, self.objects.content_file(found, entry, ref, data), {}

    def _h_get_user(
        self, *, auth: str | None, credential: Any, username: str, **_: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if auth is None:
            raise ApiError(401, "Requires authentication")
        user = self._users.get(username.lower())
        if user is None:
            raise ApiError(404, "Not Found")
        public = sum(1 for r in self._repos.values() if r.owner is user and not r.private)
        return 200, self.objects.public_user(user, public_repos=public), {}

    def _h_get_collaborator_permission(
        self,
        *,
        auth: str | None,
        credential: Any,
        owner: str,
        repo: str,
        username: str,
        **_: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("metadata", "read"))
        user = self._users.get(username.lower())
        if user is None or user.type == "Organization":
            raise ApiError(404, "Not Found")
        return 200, self.objects.collaborator_permission(user, self._role(found, user)), {}

    # ------------------------------------------------------------------ git smart HTTP

    def _git(self, request: Request, match: re.Match[str]) -> Response:
        rest = match.group("rest")
        service = request.args.get("service") if rest == "info/refs" else rest
        if service not in ("git-upload-pack", "git-receive-pack"):
            return self._git_text(request, 403, "Service not enabled.\n", None)
        pushing = service == "git-receive-pack"
        with self._lock:
            repo = self._repos.get(f"{match.group('owner')}/{match.group('repo')}".lower())
            header = request.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return self._git_text(request, 401, "", None, challenge=True)
            try:
                username, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                username, password = "", ""
            token = self._tokens.get(password)
            if (
                username != "x-access-token"
                or token is None
                or token.revoked
                or token.expires_at <= now()
            ):
                return self._git_text(
                    request,
                    401,
                    "Invalid username or token. Password authentication is not supported for "
                    "Git operations.\n",
                    "basic",
                    challenge=True,
                )
            if repo is None or not self._visible(token, repo):
                return self._git_text(request, 404, "Repository not found.\n", "basic")
            level = "write" if pushing else "read"
            if not token.allows("contents", level):
                return self._git_text(
                    request,
                    403,
                    f"Permission to {repo.full_name}.git denied to {self.bot_login}.\n",
                    "basic",
                )
            workflows = token.allows("workflows", "write")

        body = request.get_data(cache=False) if request.method == "POST" else b""
        headers = {k.lower(): v for k, v in request.headers.items()}
        on_complete = None
        if pushing and request.method == "POST":
            updates = gitops.parse_receive_pack_commands(body, headers.get("content-encoding"))
            push = Push(repo=repo.full_name, token=token.token, updates=updates)

            def on_complete(returncode: int, push: Push = push, repo: Repo = repo) -> None:
                env = self._git_env
                for update in push.updates:
                    current = gitops.rev_parse(repo.path, update.ref, env)
                    update.applied = (current or gitops.ZERO_SHA) == update.new
                    if update.applied and not update.created and not update.deleted:
                        update.forced = not gitops.is_ancestor(
                            repo.path, update.old, update.new, env
                        )
                with self._lock:
                    if any(u.applied for u in push.updates):
                        repo.pushed_at = now()
                        moved = {u.branch for u in push.updates if u.applied and u.branch}
                        self._branches_moved(repo, moved)
                    self.pushes.append(push)

        relative = repo.path.relative_to(self.git_root).as_posix()
        cgi = gitops.CGIRequest(
            method=request.method,
            path_info=f"/{relative}/{rest}",
            query_string=request.query_string.decode(),
            headers=headers,
            body=body,
            remote_user=self.bot_login,
            remote_addr=request.remote_addr or "127.0.0.1",
        )
        result = gitops.run_http_backend(
            self.git_root,
            cgi,
            {**self._git_env, "STANDIN_WORKFLOWS_WRITE": "1" if workflows else "0"},
            on_complete,
        )
        self._record_request(request, result.status, None, "basic")
        response = Response(
            result.body, status=f"{result.status} {result.reason}", direct_passthrough=True
        )
        for name, value in result.headers:
            response.headers[name] = value
        response.headers["X-GitHub-Request-Id"] = _request_id()
        return response

    def _git_text(
        self,
        request: Request,
        status: int,
        text: str,
        auth_kind: str | None,
        challenge: bool = False,
    ) -> Response:
        headers = {"X-GitHub-Request-Id": _request_id()}
        if challenge:
            headers["WWW-Authenticate"] = 'Basic realm="GitHub"'
        self._record_request(request, status, None, auth_kind)
        return Response(
            text, status=status, headers=headers, content_type="text/plain; charset=utf-8"
        )


_NOT_ACCESSIBLE = (
    "There is at least one repository that does not exist or is not "
    "accessible to the parent installation."
)


def _selected_repos(installed: list[Repo], names: list[Any], ids: list[Any]) -> list[Repo]:
    """The repositories a token asks for by name and by id, each once, first asked first."""
    if len(names) + len(ids) > 500:
        raise ApiError(422, "Too many repositories requested (maximum is 500).")
    found = [next((r for r in installed if r.name.lower() == str(n).lower()), None) for n in names]
    found += [next((r for r in installed if r.id == i), None) for i in ids]
    selected: list[Repo] = []
    for match in found:
        if match is None:
            raise ApiError(422, _NOT_ACCESSIBLE)
        if match not in selected:
            selected.append(match)
    return selected


def _granted_permissions(installed: dict[str, str], requested: Any) -> dict[str, str]:
    """What a token may do: all the installation may, or the part of it the request names."""
    if requested is None:
        return dict(installed)
    if not isinstance(requested, dict):
        raise ApiError(
            422,
            "Invalid request.\n\nFor 'properties/permissions', "
            f"{json.dumps(requested)} is not an object.",
        )
    for name, level in requested.items():
        granted = PERMISSION_LEVELS.get(installed.get(name, "none"), 0)
        wanted_level = PERMISSION_LEVELS.get(level) if isinstance(level, str) else None
        if wanted_level is None or wanted_level == 0 or wanted_level > granted:
            raise ApiError(422, "The permissions requested are not granted to this installation.")
    permissions = dict(requested)
    permissions.setdefault("metadata", "read")
    return permissions
