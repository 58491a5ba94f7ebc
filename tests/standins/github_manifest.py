"""Registering the App from a manifest, and installing it, for the GitHub stand-in.

``ManifestMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). It plays the three
steps of GitHub's App manifest flow (docs: "Registering a GitHub App from a manifest") and the
install page after them, as a person's browser meets them:

* ``POST /settings/apps/new?state=…`` (or ``/organizations/{org}/settings/apps/new``) with a
  form field ``manifest`` (JSON): the manifest is checked as GitHub checks it (``url`` required;
  a ``hook_attributes`` block needs a ``url`` that is reachable from the internet, so a
  localhost hook is refused unless the test lists the host in ``reachable_hook_hosts``, the way a
  tunnel would make it reachable; known events and permission levels only) and a page asks to
  confirm, with the name editable;
* confirming registers the App: a new id, slug, key pair, OAuth client id and secret and webhook
  secret, the manifest's events, permissions and hook; then a redirect to the manifest's
  ``redirect_url?code=…&state=…``;
* ``POST /api/v3/app-manifests/{code}/conversions`` (no authentication) answers 201 with the App
  and its credentials, once per code and within an hour, as GitHub does;
* ``GET {html_url}/installations/new`` lists the repositories of the App's owner account not yet
  installed; installing creates the installation and redirects to the App's ``setup_url`` with
  ``installation_id`` and ``setup_action=install``.

The stand-in holds one App, so registering one replaces the identity the stand-in started with
(its JWTs signed by the old key are then refused, as they would be by a different App).
"""

from __future__ import annotations

import html
import ipaddress
import json
import secrets
import string
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from . import github_git as gitops
from .github_objects import PERMISSION_LEVELS, ApiError, Ids, Installation, Objects, Repo, User, now
from .github_pages import error_page, html_page

Handled = tuple[int, Any, dict[str, str]]

MANIFEST_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/app-manifests/{code}/conversions"): (
        "convert_manifest",
        "apps/apps#create-a-github-app-from-a-manifest",
    ),
}
CODE_LIFETIME = 3600  # seconds: GitHub's hour for the whole flow
# Webhook events an App may subscribe to (the ones ClaudeCluster's manifest could name, and a few
# more); GitHub refuses a manifest naming an event it does not know.
KNOWN_EVENTS = frozenset(
    {
        "check_run",
        "check_suite",
        "issue_comment",
        "issues",
        "label",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "push",
        "repository",
        "workflow_job",
        "workflow_run",
    }
)
KNOWN_PERMISSIONS = frozenset(
    {
        "actions",
        "checks",
        "contents",
        "issues",
        "metadata",
        "pull_requests",
        "statuses",
        "workflows",
    }
)
_CODE_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class Registration:
    """An App registered from a manifest, until its code is converted."""

    code: str
    app: dict[str, Any]
    client_secret: str
    webhook_secret: str | None
    pem: str
    created: float
    converted: bool = False


def _error_page(message: str, status: int = 422) -> Response:
    return error_page("Something went wrong", message, status)


def _public_host(host: str) -> bool:
    if host in ("localhost", "") or host.endswith((".localhost", ".local", ".internal")):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return address.is_global


class ManifestMixin:
    """The manifest flow and the install page (see the module docstring)."""

    _lock: threading.RLock
    _app: dict[str, Any]
    _installations: dict[int, Installation]
    _repos: dict[str, Repo]
    _users: dict[str, User]
    _ids: Ids
    url: str
    objects: Objects
    git_root: Path
    _git_env: dict[str, str]
    app_id: int
    app_slug: str
    app_client_id: str
    private_key_pem: str
    _public_key: Any
    bot_user: User

    app_client_secret: str
    app_callback_urls: list[str]

    # the stand-in's helpers (github.py, github_hooks.py)
    add_user: Any
    add_installation: Any
    set_webhook: Any

    def _init_manifest(self) -> None:
        self.registrations: dict[str, Registration] = {}
        # Hosts a test makes "reachable from the internet" (as a tunnel would) for hook URLs.
        self.reachable_hook_hosts: set[str] = set()
        self.app_setup_url: str | None = None
        self.app_redirect_url: str | None = None
        self.installed: list[Installation] = []

    # ------------------------------------------------------------------ test helpers

    def add_account_repo(
        self, full_name: str, files: dict[str, str | bytes] | None = None, owner_type: str = "User"
    ) -> Repo:
        """A repository of an account where the App is not installed (yet)."""
        owner_login, _, name = full_name.partition("/")
        with self._lock:
            owner = self._users.get(owner_login.lower()) or self.add_user(
                owner_login, type=owner_type
            )
            path = self.git_root / owner.login / f"{name}.git"
            files = files or {"README.md": f"# {name}\n"}
            gitops.init_bare_repo(path, "main", files, self._git_env)
            repo = Repo(
                id=self._ids.next("repo"),
                owner=owner,
                name=name,
                installation_id=None,
                default_branch="main",
                private=False,
                path=path,
            )
            self._repos[full_name.lower()] = repo
            return repo

    # ------------------------------------------------------------------ pages

    def _manifest_page(self, request: Request) -> Response | None:
        """The browser pages of the flow, or None when `request` is for none of them."""
        parts = request.path.strip("/").split("/")
        if parts[-3:] == ["settings", "apps", "new"] and len(parts) in (3, 5):
            if len(parts) == 5 and parts[0] != "organizations":
                return None
            org = parts[1] if len(parts) == 5 else None
            return self._new_app_form(request, org)
        if request.path == "/settings/apps/new/confirm" and request.method == "POST":
            return self._create_app(request)
        slug = self._app["slug"]
        if request.path == f"/github-apps/{slug}/installations/new":
            return self._install_page(request)
        return None

    def _new_app_form(self, request: Request, org: str | None) -> Response:
        if request.method != "POST":
            return _error_page("Send the manifest with POST, as a form field named manifest.", 405)
        try:
            manifest = json.loads(request.form.get("manifest", ""))
        except json.JSONDecodeError:
            return _error_page("Invalid GitHub App configuration: manifest is not valid JSON")
        problem = self._manifest_problem(manifest)
        if problem:
            return _error_page(f"Invalid GitHub App configuration: {problem}")
        state = request.args.get("state", "")
        owner = org or "the signed-in account"
        body = (
            f"<p>Create a GitHub App for {html.escape(owner)} from the manifest below.</p>"
            "<form method='post' action='/settings/apps/new/confirm'>"
            "<label>GitHub App name <input name='name' id='app-name' "
            f"value='{html.escape(str(manifest.get('name') or ''), quote=True)}'></label>"
            f"<input type='hidden' name='manifest' value='{html.escape(json.dumps(manifest))}'>"
            f"<input type='hidden' name='state' value='{html.escape(state, quote=True)}'>"
            f"<input type='hidden' name='org' value='{html.escape(org or '', quote=True)}'>"
            f"<pre id='manifest'>{html.escape(json.dumps(manifest, indent=2))}</pre>"
            "<button type='submit' id='create-app'>Create GitHub App</button></form>"
        )
        return html_page("Create GitHub App", body)

    def _manifest_problem(self, manifest: Any) -> str:
        if not isinstance(manifest, dict):
            return "manifest must be a JSON object"
        if not manifest.get("url"):
            return "url can't be blank"
        if not manifest.get("redirect_url"):
            return "redirect_url can't be blank (the stand-in needs it to hand back the code)"
        hook = manifest.get("hook_attributes")
        if hook is not None:
            if not isinstance(hook, dict) or not hook.get("url"):
                return "Hook url cannot be blank"
            host = urlsplit(str(hook["url"])).hostname or ""
            if not _public_host(host) and host not in self.reachable_hook_hosts:
                return (
                    "Hook url is not supported because it isn't reachable over the public "
                    f"Internet ({host})"
                )
        events = manifest.get("default_events") or []
        unknown = sorted(set(events) - KNOWN_EVENTS)
        if unknown:
            return f"Default events unsupported: {', '.join(unknown)}"
        for name, level in (manifest.get("default_permissions") or {}).items():
            if name not in KNOWN_PERMISSIONS or level not in PERMISSION_LEVELS:
                return f"Default permission records invalid: {name}={level}"
        if "metadata" not in (manifest.get("default_permissions") or {}) and events:
            return "Default permissions must include metadata"
        return ""

    def _create_app(self, request: Request) -> Response:
        manifest = json.loads(request.form.get("manifest", "{}"))
        problem = self._manifest_problem(manifest)
        name = (request.form.get("name") or manifest.get("name") or "").strip()
        if problem or not name:
            return _error_page(problem or "Name can't be blank")
        org = request.form.get("org") or None
        with self._lock:
            registration = self._register(manifest, name, org)
        query = urlencode({"code": registration.code, "state": request.form.get("state", "")})
        return Response(status=302, headers={"Location": f"{manifest['redirect_url']}?{query}"})

    def _register(self, manifest: dict[str, Any], name: str, org: str | None) -> Registration:
        from .github import _APP_IDS  # the stand-in's one sequence of App ids

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        owner_login = org or "octocat"
        owner = self._users.get(owner_login.lower()) or self.add_user(
            owner_login, type="Organization" if org else "User"
        )
        app_id = next(_APP_IDS)
        hook = manifest.get("hook_attributes") or {}
        webhook_secret = secrets.token_hex(20) if hook else None
        self.app_id = app_id
        self.app_slug = slug
        self.app_client_id = f"Iv23li{secrets.token_hex(7)}"
        self.private_key_pem = pem
        self._public_key = key.public_key()
        self._app.update(
            id=app_id,
            slug=slug,
            client_id=self.app_client_id,
            name=name,
            description=manifest.get("description") or "",
            external_url=manifest["url"],
            owner=owner,
            permissions={"metadata": "read", **(manifest.get("default_permissions") or {})},
            events=list(manifest.get("default_events") or []),
            created_at=now(),
        )
        self.bot_user = self.add_user(f"{slug}[bot]", type="Bot")
        self.app_setup_url = manifest.get("setup_url")
        self.app_redirect_url = manifest.get("redirect_url")
        self.set_webhook(hook.get("url") if hook else None, webhook_secret)
        code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(20))
        registration = Registration(
            code=code,
            app=self._app,
            client_secret=secrets.token_hex(20),
            webhook_secret=webhook_secret,
            pem=pem,
            created=time.monotonic(),
        )
        self.registrations[code] = registration
        self.app_client_secret = registration.client_secret
        self.app_callback_urls = [str(u) for u in manifest.get("callback_urls") or []][:10]
        return registration

    def _install_page(self, request: Request) -> Response:
        owner: User = self._app["owner"]
        with self._lock:
            free = [
                r
                for r in self._repos.values()
                if r.owner is owner and r.installation_id is None and not r.fork
            ]
            if request.method == "POST":
                chosen = set(request.form.getlist("repository_ids"))
                return self._install(owner, [r for r in free if str(r.id) in chosen])
        rows = "".join(
            f"<label><input type='checkbox' name='repository_ids' value='{r.id}' checked> "
            f"{html.escape(r.full_name)}</label><br>"
            for r in free
        )
        body = (
            f"<p>Install {html.escape(self._app['name'])} on {html.escape(owner.login)}</p>"
            f"<form method='post'>{rows}<button type='submit' id='install'>Install</button></form>"
        )
        return html_page(f"Install {self._app['name']}", body)

    def _install(self, owner: User, repos: list[Repo]) -> Response:
        if not repos:
            return _error_page("Select at least one repository")
        installation_id = max([0, *self._installations]) + 1
        inst = self.add_installation(installation_id, owner.login, account_type=owner.type)
        for repo in repos:
            repo.installation_id = installation_id
        self.installed.append(inst)
        if not self.app_setup_url:
            return html_page("Installed", f"<p>Installed on {len(repos)} repositories.</p>")
        query = urlencode({"installation_id": installation_id, "setup_action": "install"})
        return Response(status=302, headers={"Location": f"{self.app_setup_url}?{query}"})

    # ------------------------------------------------------------------ REST

    def _h_convert_manifest(self, *, code: str, **_: Any) -> Handled:
        with self._lock:
            registration = self.registrations.get(code)
            fresh = registration and time.monotonic() - registration.created < CODE_LIFETIME
            if not registration or registration.converted or not fresh:
                raise ApiError(404, "Not Found")
            registration.converted = True
        body = {
            **self.objects.integration(len(self._installations)),
            "client_secret": registration.client_secret,
            "webhook_secret": registration.webhook_secret,
            "pem": registration.pem,
        }
        body.pop("installations_count", None)
        return 201, body, {}
