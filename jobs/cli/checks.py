"""What `doctor` (and `serve`, for Docker) checks: each check answers with one `Check`.

A check never raises and never quotes a secret: its text is either what was found ("ok") or
the fix, in one line an operator can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import docker
import httpx
from docker.errors import DockerException
from redis import Redis
from redis.exceptions import RedisError

from jobs.common.settings import CommonSettings, ConfigError, WebSettings, env_file

DOCKER_FIX = "start it (e.g. 'dockerd &' or 'systemctl start docker') or point DOCKER_HOST at it"
# What a webhook secret must have at least: GitHub asks for "a random string with high
# entropy"; `openssl rand -hex 32` gives 64 characters.
WEAK_SECRET_LENGTH = 20
PLACEHOLDERS = {"secret", "changeme", "change-me", "password", "development", "test", "webhook"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not checked, because what it needs failed already
    text: str
    warning: bool = False  # passing, with something the operator should know

    @classmethod
    def skipped(cls, name: str, because: str) -> Check:
        return cls(name, None, f"not checked: {because}")


def docker_client() -> docker.DockerClient:
    """A client that has talked to the engine once; DockerException when none answers."""
    client = docker.from_env(timeout=15)
    client.ping()
    return client


def docker_where() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_problem() -> str | None:
    """Why the Docker engine cannot be used, as the fix; None when it answers."""
    try:
        docker_client().close()
    except DockerException:
        return f"the Docker engine is not reachable at {docker_where()}: {DOCKER_FIX}"
    return None


def shown_url(url: str) -> str:
    """A URL fit to print: a password in it is replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def redis_check(settings: CommonSettings) -> Check:
    where = shown_url(settings.redis_url)
    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except RedisError as exc:
        reason = type(exc).__name__
        return Check(
            "redis",
            False,
            f"{where} does not answer ({reason}): start Redis there, or unset REDIS_URL to "
            "let `claudecluster serve` run one",
        )
    finally:
        client.close()
    return Check("redis", True, f"{where} answers")


def webhook_secret_check(settings: WebSettings) -> Check:
    secret = (
        settings.github_webhook_secret.get_secret_value() if settings.github_webhook_secret else ""
    )
    fix = "a random one (`openssl rand -hex 32`), the same as in the App's webhook settings"
    if not secret:
        return Check(
            "webhook secret",
            False,
            f"GITHUB_WEBHOOK_SECRET is not set in {env_file('web')}: set {fix}",
        )
    if len(secret) < WEAK_SECRET_LENGTH or secret.lower() in PLACEHOLDERS or len(set(secret)) < 6:
        return Check(
            "webhook secret",
            False,
            f"GITHUB_WEBHOOK_SECRET is weak (under {WEAK_SECRET_LENGTH} characters, or a "
            f"guessable value): replace it with {fix}",
        )
    return Check("webhook secret", True, f"set in the web's settings ({len(secret)} characters)")


def foreign_secrets_check(role: str, settings_class: type[CommonSettings]) -> Check:
    found = settings_class.foreign_secrets()
    if found:
        return Check(f"{role} secrets", False, "; ".join(found))
    return Check(f"{role} secrets", True, "only its own")


PUBLIC_URL_FIX = "GitHub must reach the webhook: set PUBLIC_URL to a tunnel or public address"


def public_url_check(settings: WebSettings) -> Check:
    url = settings.public_url
    if not url:
        return Check("public URL", False, f"PUBLIC_URL is not set: {PUBLIC_URL_FIX}")
    if not url.startswith("https://"):
        return Check(
            "public URL",
            False,
            f"{url} is not https: GitHub would send the webhook secret's signatures and every "
            "payload in clear; use an https address (a tunnel gives one)",
        )
    try:
        reply = httpx.get(f"{url}/healthz", timeout=10, follow_redirects=False)
        body = (
            reply.json()
            if reply.headers.get("content-type", "").startswith("application/json")
            else {}
        )
    except (httpx.HTTPError, ValueError) as exc:
        return Check(
            "public URL",
            False,
            f"{url}/healthz does not answer ({type(exc).__name__}): start the tunnel or fix "
            f"PUBLIC_URL; {PUBLIC_URL_FIX}",
        )
    # Our /healthz answers 200 or 503 with these keys; anything else is another server.
    if reply.status_code not in (200, 503) or not isinstance(body, dict) or "redis" not in body:
        return Check(
            "public URL",
            False,
            f"{url}/healthz answers {reply.status_code}, but not as this service does: point "
            "PUBLIC_URL (or the tunnel) at the web process",
        )
    return Check("public URL", True, f"{url} reaches this service")


def parsed(settings_class: type[CommonSettings]) -> CommonSettings | str:
    """The role's settings as it reads them, or the one line naming what is malformed."""
    try:
        return settings_class.parse()
    except ConfigError as exc:
        return f"{exc} (in {env_file(settings_class.ROLE)} or the environment)"
