"""Shared helpers for tests: real payloads from GitHub's examples, signing, free ports, waiting."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import socket
import time
import uuid
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NPM = ROOT / ".cache" / "npm" / "node_modules"


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


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pointed_at(payload: dict, repo: str, installation_id: int, login: str = "octocat",
               user_id: int = 583231) -> dict:  # fmt: skip
    """One of GitHub's examples, re-addressed to a repository, installation and sender of ours."""
    owner, name = repo.split("/")
    payload["repository"].update(full_name=repo, name=name)
    payload["repository"]["owner"]["login"] = owner
    payload.setdefault("installation", {"node_id": "MDIz"})["id"] = installation_id
    payload["sender"].update(login=login, id=user_id, type="User")
    return payload


def pull_event_payload(action: str, repo: str, number: int, installation_id: int,
                       labels: list[str] = (), label: str | None = None) -> dict:  # fmt: skip
    """`pull_request.<action>` from GitHub's examples, for pull request `number`."""
    payload = pointed_at(webhook_example("pull_request", action), repo, installation_id)
    payload["number"] = number
    payload["pull_request"]["number"] = number
    payload["pull_request"]["labels"] = [{"name": name} for name in labels]
    if label is not None:
        payload["label"] = {**payload.get("label", {}), "name": label}
    return payload


def review_comment_payload(repo: str, number: int, comment_id: int, body: str,
                           installation_id: int) -> dict:  # fmt: skip
    payload = pointed_at(webhook_example("pull_request_review_comment", "created"), repo,
                         installation_id)  # fmt: skip
    payload["pull_request"]["number"] = number
    payload["comment"].update(id=comment_id, body=body)
    payload["comment"]["user"].update(login="octocat", id=583231, type="User")
    return payload
