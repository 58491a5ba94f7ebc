"""Shared helpers for tests: real payloads from GitHub's examples, signing, free ports, waiting."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from redis import Redis

from jobs.sandbox.container import LABEL
from jobs.sandbox.pool import claimed_name

ROOT = Path(__file__).resolve().parent.parent
NPM = ROOT / ".cache" / "npm" / "node_modules"

# The CLI's own stdout (the run's output stream, fresh or warm sandbox alike): the oldest process
# whose command line is the CLI's.
CLI_STDOUT = (
    "cli=$(for p in /proc/[0-9]*; do [ \"$(head -c 10 $p/cmdline 2>/dev/null | tr '\\0' ' ')\" "
    "= 'claude -p ' ] && basename $p; done | sort -n | head -1); echo /proc/$cli/fd/1"
)


def npm_package(name: str) -> Path:
    path = NPM / name
    if not path.exists():
        raise RuntimeError(f"{name} is missing: run `bash scripts/test-deps.sh`")
    return path


@cache
def _webhook_examples() -> list[dict]:
    index = npm_package("@octokit/webhooks-examples") / "api.github.com" / "index.json"
    return json.loads(index.read_text())


def webhook_example(event: str, action: str | None) -> dict:
    """A deep copy of GitHub's own example for `event`.`action`, one with `installation` if any."""
    found = [
        example
        for entry in _webhook_examples()
        if entry["name"] == event
        for example in entry["examples"]
        if example.get("action") == action
    ]
    if not found:
        raise LookupError(f"no example for {event}.{action}")
    found.sort(key=lambda example: "installation" not in example)
    return copy.deepcopy(found[0])


def issue_comment_payload(
    repo: str,
    number: int,
    body: str,
    installation_id: int,
    login: str = "octocat",
    user_id: int = 583231,
    user_type: str = "User",
) -> dict:
    """GitHub's `issue_comment.created` example, pointed at a repository and issue of ours."""
    payload = webhook_example("issue_comment", "created")
    owner, name = repo.split("/")
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = name
    payload["repository"]["owner"]["login"] = owner
    payload["issue"]["number"] = number
    payload["issue"].pop("pull_request", None)
    payload["comment"]["body"] = body
    payload["comment"]["id"] = 1_000_000 + number
    payload["comment"]["user"].update(login=login, id=user_id, type=user_type)
    payload["installation"]["id"] = installation_id
    return payload


def sign(secret: str, body: bytes) -> str:
    """`X-Hub-Signature-256` exactly as GitHub computes it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(event: str, body: bytes, secret: str, delivery: str | None = None) -> dict:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_containers(engine, session_id: str, all: bool = False) -> list:
    """The session's containers on `engine`: fresh by label, warm by their claimed name."""
    by_label = engine.containers.list(all=all, filters={"label": f"{LABEL}={session_id}"})
    by_name = engine.containers.list(all=all, filters={"name": claimed_name(session_id)})
    return by_label + [c for c in by_name if c.name == claimed_name(session_id)]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_count(count, target: int, stall: float, interval: float = 0.5, what: str = "count"):
    """Until `count()` reaches `target`. A busy machine may take long, so this fails only once
    the count has not grown for `stall` seconds: slow progress passes, no progress does not."""
    best, since = -1, time.monotonic()
    while True:
        value = count()
        if value >= target:
            return value
        if value > best:
            best, since = value, time.monotonic()
        elif time.monotonic() - since > stall:
            raise AssertionError(f"{what}: stuck at {best} of {target} for {stall}s")
        time.sleep(interval)


def pointed_at(
    payload: dict, repo: str, installation_id: int, login: str = "octocat", user_id: int = 583231
) -> dict:
    """One of GitHub's examples, re-addressed to a repository, installation and sender of ours."""
    owner, name = repo.split("/")
    payload["repository"].update(full_name=repo, name=name)
    payload["repository"]["owner"]["login"] = owner
    payload.setdefault("installation", {"node_id": "MDIz"})["id"] = installation_id
    payload["sender"].update(login=login, id=user_id, type="User")
    return payload


def pull_event_payload(
    action: str,
    repo: str,
    number: int,
    installation_id: int,
    labels: list[str] = (),
    label: str | None = None,
) -> dict:
    """`pull_request.<action>` from GitHub's examples, for pull request `number`."""
    payload = pointed_at(webhook_example("pull_request", action), repo, installation_id)
    payload["number"] = number
    payload["pull_request"]["number"] = number
    payload["pull_request"]["labels"] = [{"name": name} for name in labels]
    if label is not None:
        payload["label"] = {**payload.get("label", {}), "name": label}
    return payload


def check_run_payload(
    github, check_run_id: int, action: str, login: str, user_id: int, identifier: str = ""
) -> dict:
    """`check_run.<action>` as GitHub sends it when `login` clicks a button of the run: GitHub's
    example with the stand-in's check run in it. `requested_action` needs the button shown
    (`identifier`), `rerequested` a completed run (GitHub shows Re-run only then)."""
    run = github.check_run_json(check_run_id)
    repo = run["url"].split("/repos/", 1)[1].split("/check-runs/", 1)[0]
    installation = github.repo(repo).installation_id
    payload = pointed_at(webhook_example("check_run", action), repo, installation, login, user_id)
    if action == "requested_action":
        payload["requested_action"] = github.press(check_run_id, identifier)
    elif action == "rerequested":
        github.rerequestable(check_run_id)
    payload["check_run"] = {**payload["check_run"], **run}
    return payload


def review_comment_payload(
    repo: str, number: int, comment_id: int, body: str, installation_id: int
) -> dict:
    payload = pointed_at(
        webhook_example("pull_request_review_comment", "created"), repo, installation_id
    )
    payload["pull_request"]["number"] = number
    payload["comment"].update(id=comment_id, body=body)
    payload["comment"]["user"].update(login="octocat", id=583231, type="User")
    return payload


def enqueue(redis, request, timeout: int = 600):
    """Queue a session as the front door does (app.enqueue, async) from a synchronous test."""
    from redis.asyncio import Redis as AsyncRedis

    from app.enqueue import enqueue_session
    from jobs.common.queue import session_queue

    async def run():
        kw = redis.connection_pool.connection_kwargs
        async with AsyncRedis(host=kw["host"], port=kw["port"], db=kw.get("db", 0)) as client:
            return await enqueue_session(client, session_queue(redis, "sessions"), request, timeout)

    return asyncio.run(run())


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]
    data: bytes

    @property
    def json(self):
        return json.loads(self.data)

    def get_data(self) -> bytes:
        return self.data


class AsgiClient:
    """Drives an ASGI app in-process, one request at a time, on one event loop of its own.

    One loop for the client's life, because the app's Redis connections belong to the loop that
    opened them. Exceptions the app raises reach the caller, where a server would answer 500.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def get(self, path: str, headers=()) -> Reply:
        return self.request("GET", path, b"", headers)

    def post(self, path: str, data: bytes = b"", headers=()) -> Reply:
        return self.request("POST", path, data, headers)

    def request(self, method: str, path: str, body: bytes, headers) -> Reply:
        pairs = list(headers.items() if isinstance(headers, dict) else headers)
        if not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(body))))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 12345),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        }
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
        sent: list[dict] = []

        async def receive():
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        return Reply(
            start["status"],
            {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])},
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        )


@contextmanager
def serving(app, tls: tuple[Path, Path] | None = None):
    """An ASGI app on a real loopback port, served by uvicorn in a thread; yields its base URL.
    `tls`: a certificate and key file, to serve https."""
    import threading

    import uvicorn

    port = free_port()
    options = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.02, "the ASGI app to listen")
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def dead_redis():
    """A client of a Redis that is not there, failing at once (redis-py retries by default)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


class RedisServer:
    """A redis-server of a test's own on a free loopback port.

    `durable`: an append-only file synced on every write, so a killed server comes back whole.
    """

    def __init__(self, data: Path, durable: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.data, self.durable, self.port = data, durable, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.data),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._ping, 10, 0.05, "redis-server to answer")

    def _ping(self) -> bool:
        try:
            return Redis.from_url(self.url, socket_timeout=1).ping()
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def reported_usage(events: list[dict]) -> dict:
    """What the API reported in a stream: message_start's usage, updated by message_delta's."""
    (start,) = [e for e in events if e["type"] == "message_start"]
    usage = dict(start["message"]["usage"])
    for event in events:
        if event["type"] == "message_delta":
            usage.update(event["usage"])
    return usage
