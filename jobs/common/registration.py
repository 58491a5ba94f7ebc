"""Registering the GitHub App: the manifest from app.yml, the code's conversion, the credentials
written into the per-role env files.

GitHub's manifest flow (docs: "Registering a GitHub App from a manifest") takes three steps in
one hour: the browser posts the manifest to GitHub with a `state`, GitHub redirects back with a
`code`, and `POST /app-manifests/{code}/conversions` answers with the App's id, private key,
webhook secret and OAuth client. The web's setup pages (app/setup.py) and `claudecluster setup`
both drive it through this module, so there is one way the credentials reach the disk: each
secret into its own role's env file (the private key to the worker's, the webhook secret and
OAuth client to the web's), mode 0600, written atomically, once. A second registration is
refused while credentials exist: setup cannot be re-entered from the network to overwrite them.

The flow is guarded by a setup token, printed on the service's console and kept in the env
folder (0600): whoever can read the console or the folder may register the App; a stranger who
merely reaches the port before the operator does cannot.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml
from dotenv import dotenv_values

APP_MANIFEST = Path(__file__).resolve().parents[2] / "app.yml"
TOKEN_FILE = "setup.token"
STATE_LIFETIME = 3600  # GitHub's hour for the whole flow
# What setup writes, by role: the App's key only where the worker reads it, the webhook secret
# and the OAuth client only where the web does.
WORKER_KEYS = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_API_URL")
WEB_KEYS = (
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_CLIENT_ID",
    "GITHUB_CLIENT_SECRET",
    "GITHUB_APP_URL",
    "GITHUB_API_URL",
)


class SetupError(Exception):
    """A step of the setup failed; the message says what to do (and holds no secret)."""


class AlreadyRegistered(SetupError):
    """Credentials exist: setup is over and will not overwrite them."""


@dataclass(frozen=True)
class GitHubSite:
    """Where the App lives: github.com, or a GitHub Enterprise Server by its base URL."""

    web_url: str
    api_url: str

    @classmethod
    def at(cls, web_url: str | None = None, api_url: str | None = None) -> GitHubSite:
        web = (web_url or "https://github.com").rstrip("/")
        if not web.startswith(("https://", "http://")):
            raise SetupError(f"the GitHub URL must start with https:// (got {web!r})")
        if api_url:
            api = api_url.rstrip("/")
        elif urlsplit(web).hostname in ("github.com", "www.github.com"):
            api = "https://api.github.com"
        else:
            api = f"{web}/api/v3"  # GHES serves its API under the same host
        return cls(web, api)

    @property
    def dotcom(self) -> bool:
        return self.api_url == "https://api.github.com"

    def new_app_url(self, organization: str | None, state: str) -> str:
        path = "/settings/apps/new"
        if organization:
            path = f"/organizations/{quote(organization, safe='')}/settings/apps/new"
        return f"{self.web_url}{path}?{urlencode({'state': state})}"


def public_host(url: str) -> bool:
    """Whether GitHub could deliver webhooks to `url`: not localhost or a private address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return bool(host)


def manifest(base_url: str, public_url: str | None, name: str | None = None) -> dict[str, Any]:
    """The App manifest from app.yml: its name, events and permissions, with this service's
    addresses. `base_url` is where the person's browser reaches this service (the redirect
    after GitHub); the webhook goes to `public_url`, left out when there is none, since GitHub
    refuses a hook it cannot reach."""
    app = yaml.safe_load(APP_MANIFEST.read_text())
    base_url = base_url.rstrip("/")
    built: dict[str, Any] = {
        "name": (name or app["name"]).strip(),
        "description": app.get("description", ""),
        "url": app["url"],
        "public": bool(app.get("public", False)),
        "redirect_url": f"{base_url}/setup/callback",
        "setup_url": f"{base_url}/setup/installed",
        "setup_on_update": False,
        # The dashboard's sign-in returns here (app/signin.py); GitHub allows up to ten.
        "callback_urls": list(
            dict.fromkeys(f"{u.rstrip('/')}/login/callback" for u in (base_url, public_url) if u)
        ),
        "default_events": list(app["default_events"]),
        "default_permissions": dict(app["default_permissions"]),
    }
    if public_url:
        built["hook_attributes"] = {"url": f"{public_url.rstrip('/')}/webhooks", "active": True}
    return built


@dataclass(frozen=True)
class Registration:
    """A registered App's identity and credentials, as GitHub handed them over."""

    app_id: int
    slug: str
    html_url: str
    pem: str
    webhook_secret: str
    client_id: str = ""
    client_secret: str = ""
    api_url: str = "https://api.github.com"

    def __repr__(self) -> str:  # never the key or the secrets
        return f"Registration(app_id={self.app_id}, slug={self.slug!r}, api_url={self.api_url!r})"

    @property
    def install_url(self) -> str:
        return f"{self.html_url}/installations/new"


def _github(api_url: str, auth: Any = None) -> Any:
    from githubkit import GitHub
    from githubkit.cache import MemCacheStrategy

    # A cache of its own: githubkit's shared one keys App JWTs by App id alone, so a retry
    # with the right key after a wrong one would present the wrong key's cached JWT.
    cache = MemCacheStrategy()
    return GitHub(auth, base_url=api_url, http_cache=False, timeout=30, cache_strategy=cache)


def convert(site: GitHubSite, code: str) -> Registration:
    """`POST /app-manifests/{code}/conversions`: the App GitHub made from the manifest.

    GitHub sends no webhook secret for an App registered without a hook; one is made here, to
    be entered in the App's settings once the service has a public address."""
    from githubkit.exception import GitHubException, RequestFailed

    # GHES wants these explicitly on this unauthenticated call (probot#745).
    headers = {"Accept": "application/vnd.github+json", "Content-Type": "application/json"}
    github = _github(site.api_url)  # held: githubkit's namespaces die with their client
    try:
        answer = github.rest.apps.create_from_manifest(code, headers=headers)
    except RequestFailed as exc:
        status = exc.response.status_code
        if status == 404:
            raise SetupError(
                "GitHub no longer knows this code: it is used once and expires after an hour. "
                "Start the setup again."
            ) from None
        raise SetupError(f"GitHub refused the conversion (HTTP {status}).") from None
    except GitHubException as exc:
        raise SetupError(f"cannot reach GitHub at {site.api_url} ({type(exc).__name__})") from None
    app = answer.json()
    return Registration(
        app_id=int(app["id"]),
        slug=app["slug"],
        html_url=app["html_url"],
        pem=app["pem"],
        webhook_secret=app.get("webhook_secret") or secrets.token_hex(32),
        client_id=app.get("client_id") or "",
        client_secret=app.get("client_secret") or "",
        api_url=site.api_url,
    )


@dataclass(frozen=True)
class ExistingApp:
    """What a person types in to import an App registered by hand."""

    app_id: str
    pem: str
    webhook_secret: str
    client_id: str = ""
    client_secret: str = ""


def import_existing(site: GitHubSite, given: ExistingApp) -> Registration:
    """An App registered earlier, checked the way the worker will use it: a JWT signed with the
    key, and `GET /app` answering with that App."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from githubkit import AppAuthStrategy
    from githubkit.exception import GitHubException, RequestFailed

    app_id, pem = given.app_id.strip(), given.pem.replace("\\n", "\n").strip() + "\n"
    if not app_id.isdigit():
        raise SetupError("the App ID is the number on the App's settings page")
    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise SetupError(
            "the private key is not a PEM private key (the .pem file GitHub made)"
        ) from None
    if len(given.webhook_secret) < 16:
        raise SetupError("the webhook secret must be at least 16 characters")
    github = _github(site.api_url, AppAuthStrategy(app_id, pem))
    try:
        app = github.rest.apps.get_authenticated()
    except RequestFailed as exc:
        status = exc.response.status_code
        raise SetupError(
            f"GitHub refused this App ID and key (HTTP {status}): check both belong to one App."
        ) from None
    except GitHubException as exc:
        raise SetupError(f"cannot reach GitHub at {site.api_url} ({type(exc).__name__})") from None
    found = app.json()
    if str(found.get("id")) != app_id:
        raise SetupError("GitHub answered for another App: check the App ID")
    return Registration(
        app_id=int(app_id),
        slug=found["slug"],
        html_url=found["html_url"],
        pem=pem,
        webhook_secret=given.webhook_secret,
        client_id=given.client_id.strip() or found.get("client_id") or "",
        client_secret=given.client_secret.strip(),
        api_url=site.api_url,
    )


def _quoted(value: str) -> str:
    # Single quotes: python-dotenv takes the text as it is. The PEM's newlines become "\n",
    # which the worker's settings turn back (many secret stores flatten them the same way).
    value = value.replace("\n", "\\n")
    if "'" in value:
        raise SetupError("a value with a single quote cannot be written to an env file")
    return f"'{value}'"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Set `values` in the env file at `path`, keeping its other lines; mode 0600, atomically
    (a reader sees the old file or the new one, never half of it)."""
    lines = path.read_text().splitlines() if path.exists() else []
    left = dict(values)
    out = []
    for line in lines:
        name = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and name in left:
            out.append(f"{name}={_quoted(left.pop(name))}")
        else:
            out.append(line)
    out += [f"{name}={_quoted(value)}" for name, value in left.items()]
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(out) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


class CredentialStore:
    """The per-role env files in `env_dir`, as setup sees them."""

    def __init__(self, env_dir: Path) -> None:
        self.env_dir = env_dir

    def _values(self, role: str) -> dict[str, str]:
        path = self.env_dir / f"{role}.env"
        return {k: v or "" for k, v in dotenv_values(path).items()} if path.is_file() else {}

    def registered(self, environment: dict[str, str] | None = None) -> bool:
        """Whether an App's credentials exist anywhere setup would write them (or in
        `environment`, the process's own)."""
        worker, web = self._values("worker"), self._values("web")
        env = environment if environment is not None else dict(os.environ)
        return any(
            (
                worker.get("GITHUB_APP_ID"),
                worker.get("GITHUB_PRIVATE_KEY"),
                worker.get("GITHUB_PRIVATE_KEY_PATH"),
                web.get("GITHUB_WEBHOOK_SECRET"),
                env.get("GITHUB_WEBHOOK_SECRET"),
            )
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.env_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.env_dir / ".setup.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, registration: Registration) -> None:
        """Write the credentials, each into its role's file, unless some exist already."""
        with self._locked():
            if self.registered():
                raise AlreadyRegistered(
                    "this service already has an App's credentials; setup will not overwrite "
                    f"them (remove them from {self.env_dir} on the server to start over)"
                )
            api = (
                {}
                if registration.api_url == "https://api.github.com"
                else {"GITHUB_API_URL": registration.api_url}
            )
            write_env_file(
                self.env_dir / "worker.env",
                {
                    "GITHUB_APP_ID": str(registration.app_id),
                    "GITHUB_PRIVATE_KEY": registration.pem,
                    **api,
                },
            )
            web = {
                "GITHUB_CLIENT_ID": registration.client_id,
                "GITHUB_CLIENT_SECRET": registration.client_secret,
                "GITHUB_APP_URL": registration.html_url,
                **api,
            }
            # The webhook secret last: it is what ends the web's setup mode.
            web["GITHUB_WEBHOOK_SECRET"] = registration.webhook_secret
            write_env_file(self.env_dir / "web.env", {k: v for k, v in web.items() if v})
            with contextlib.suppress(FileNotFoundError):
                (self.env_dir / TOKEN_FILE).unlink()

    def setup_token(self) -> str:
        """The token that opens the setup pages: made once, kept 0600 beside the env files."""
        path = self.env_dir / TOKEN_FILE
        self.env_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written aside, then linked into place: a reader never sees it half made, and of
            # two processes starting at once, one token wins.
            aside = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink()
        return path.read_text().strip()

    def token_matches(self, presented: str | None) -> bool:
        path = self.env_dir / TOKEN_FILE
        if not presented or not path.is_file():
            return False
        return hmac.compare_digest(presented.encode(), path.read_text().strip().encode())


def _state_mac(token: str, nonce: str, issued: str, bound: str) -> str:
    message = f"{nonce}.{issued}.{bound}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]


def new_state(token: str, bound: str, now: float | None = None) -> str:
    """A CSRF `state` for GitHub's round trip: random, dated, and signed with the setup token
    over `bound` (the GitHub site it went to), so the callback tells its own from a forged one,
    and the site from a swapped one, without storing anything."""
    issued = str(int(now if now is not None else time.time()))
    nonce = secrets.token_urlsafe(12)
    return f"{nonce}.{issued}.{_state_mac(token, nonce, issued, bound)}"


def state_valid(token: str, state: str, bound: str, now: float | None = None) -> bool:
    try:
        nonce, issued, mac = state.split(".")
        age = (now if now is not None else time.time()) - int(issued)
    except ValueError:
        return False
    expected = _state_mac(token, nonce, issued, bound)
    return 0 <= age <= STATE_LIFETIME and hmac.compare_digest(mac, expected)
