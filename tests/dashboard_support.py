"""The dashboard on real parts, without Docker: the web process's ASGI service (uvicorn, in a
thread), a real Redis, the GitHub stand-in's OAuth, and sessions written by the worker's own
history writer (jobs/common/history.py)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
from redis import Redis

from app.service import Service, create_service
from jobs.common.history import SessionHistory
from jobs.common.request import SessionRequest
from jobs.common.settings import WebSettings, WorkerSettings
from tests.standins.github import GitHubStandIn
from tests.support import serving

INSTALLATION = 88
MINE = "octo-org/mine"  # alice and bob write here
THEIRS = "octo-org/theirs"  # only bob writes here; alice reads it
ADMIN = "carol"  # DASHBOARD_ADMINS, collaborator nowhere


@contextlib.contextmanager
def standin() -> Iterator[GitHubStandIn]:
    with GitHubStandIn() as github:
        github.add_installation(INSTALLATION, "octo-org")
        github.add_repo(MINE, INSTALLATION)
        github.add_repo(THEIRS, INSTALLATION, private=True)
        for login in ("alice", "bob", ADMIN, "mallory"):
            github.add_user(login)
        github.add_collaborator(MINE, "alice", "write")
        github.add_collaborator(MINE, "bob", "admin")
        github.add_collaborator(THEIRS, "bob", "write")
        github.add_collaborator(THEIRS, "alice", "read")
        yield github


@dataclass
class Dashboard:
    url: str
    github: GitHubStandIn
    redis: Redis
    service: Service
    worker: WorkerSettings

    def session(self, repo: str, number: int = 1, state: str = "running") -> SessionHistory:
        """A session as the worker records it."""
        session_id = f"session-{secrets.token_hex(6)}"
        history = SessionHistory(self.redis, session_id, self.worker)
        request = SessionRequest(
            delivery_id=session_id,
            installation_id=INSTALLATION,
            repo=repo,
            number=number,
            requester="alice",
            requester_id=1,
            instruction="fix it",
        )
        url = f"{self.github.url}/{repo}/issues/{number}#issuecomment-{number}"
        history.open(request, "implement", url, ("Queued", "Preparing", "Running", "Done"))
        history.step(1, "Preparing")
        if state != "running":
            history.finish(state, f"**{state}**", {})
        return history

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=20)


@contextlib.contextmanager
def dashboard(redis_url: str, **overrides: str) -> Iterator[Dashboard]:
    with standin() as github:
        settings = WebSettings.parse(
            REDIS_URL=redis_url,
            GITHUB_WEBHOOK_SECRET="dashboard-webhook-secret",
            GITHUB_CLIENT_ID=github.app_client_id,
            GITHUB_CLIENT_SECRET=github.app_client_secret,
            GITHUB_URL=github.url,
            GITHUB_API_URL=github.api_url,
            DASHBOARD_ADMINS=ADMIN,
            **overrides,
        )
        service = create_service(settings)
        with serving(service) as url:
            github.app_callback_urls = [f"{url}/login/callback"]
            worker = WorkerSettings.parse(REDIS_URL=redis_url)
            yield Dashboard(url, github, Redis.from_url(redis_url), service, worker)


def sign_in(
    board: Dashboard, client: httpx.Client, login: str, start_at: str = "/login"
) -> httpx.Response:
    """The whole round trip over HTTP: our /login, GitHub's authorize page, our callback."""
    start = client.get(start_at)
    assert start.status_code == 302, start.text
    authorize = httpx.get(start.headers["location"], timeout=10)
    assert authorize.status_code == 200 and "Authorize" in authorize.text, authorize.text
    query = parse_qs(urlsplit(start.headers["location"]).query)
    form = {name: values[0] for name, values in query.items()}
    granted = httpx.post(
        f"{board.github.url}/login/oauth/authorize", data={**form, "login": login}, timeout=10
    )
    assert granted.status_code == 302, granted.text
    back = urlsplit(granted.headers["location"])
    return client.get(f"{back.path}?{back.query}")
