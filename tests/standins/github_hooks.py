"""The App's webhook and its delivery log, for the GitHub stand-in.

``HooksMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). It plays GitHub's
side of webhook delivery:

* ``set_webhook(url, secret)`` is the App's webhook configuration;
* ``deliver(event, payload, url=…, secret=…)`` POSTs the payload like GitHub (signed
  ``X-Hub-Signature-256`` and ``X-Hub-Signature``, ``X-GitHub-Event``, a fresh
  ``X-GitHub-Delivery`` GUID …) to a real HTTP URL and logs the outcome: ``status_code`` and
  ``status`` ("OK" for a 2xx, ``Invalid HTTP Response: 503``, ``failed to connect``,
  ``timed out``; no response means ``status_code`` 0);
* ``record_delivery(…)`` adds a delivery to the log without sending it (history: old or many
  deliveries);
* the REST side, App JWT only, like GitHub:
  ``GET /app/hook/deliveries`` (newest first, ``per_page`` ≤ 100, ``cursor`` pagination through
  the ``Link`` header, ``status=success|failure``), ``GET /app/hook/deliveries/{delivery_id}``,
  and ``POST /app/hook/deliveries/{delivery_id}/attempts`` (202), which re-sends the same body
  with the SAME ``X-GitHub-Delivery`` in the background, as GitHub does, and logs it as a new
  delivery with ``redelivery: true``. A redelivery goes to the webhook's current URL and is
  signed with its current secret (the delivery's own when no webhook is configured).
  ``hold_redeliveries()`` keeps accepted redeliveries waiting (GitHub's queue being slow) until
  ``release_redeliveries()``; ``settle()`` waits for those in progress.

Deliveries older than ``hook_retention`` (7 days, as on GHES; 3 on github.com) are refused a
redelivery with 422. Delivery timeouts follow github.com (10 s; GHES allows 30) so tests stay
fast. These routes are kept out of ``ROUTES`` (see ``HOOK_ROUTES``) and validated by
``tests/test_redelivery.py``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from werkzeug.wrappers import Request

from .github_objects import ApiError, iso, now

Handled = tuple[int, Any, dict[str, str]]

# (method, OpenAPI path template) -> handler name, documentation path
HOOK_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/app/hook/deliveries"): (
        "list_hook_deliveries",
        "apps/webhooks#list-deliveries-for-an-app-webhook",
    ),
    ("GET", "/app/hook/deliveries/{delivery_id}"): (
        "get_hook_delivery",
        "apps/webhooks#get-a-delivery-for-an-app-webhook",
    ),
    ("POST", "/app/hook/deliveries/{delivery_id}/attempts"): (
        "redeliver_hook_delivery",
        "apps/webhooks#redeliver-a-delivery-for-an-app-webhook",
    ),
}

HOOKSHOT_AGENT = "GitHub-Hookshot/5f2a1c7"
CURSOR = re.compile(r"v1_(\d+)")
MAX_RESPONSE_BODY = 64 * 1024


@dataclass
class HookDelivery:
    """One attempt to deliver an event, as GitHub logs it."""

    id: int
    guid: str
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    url: str
    body: bytes  # the exact bytes sent (a redelivery sends them again)
    delivered_at: datetime
    redelivery: bool
    status_code: int  # 0 when no HTTP response came back
    status: str
    duration: float
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None
    secret: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Sent:
    """An event as it goes out to a webhook URL."""

    event: str
    body: bytes
    url: str
    secret: str | None
    guid: str
    redelivery: bool = False


@dataclass(frozen=True)
class _Answer:
    """How a webhook answered one delivery (``status_code`` 0: no HTTP response)."""

    delivered_at: datetime
    status_code: int
    status: str
    duration: float
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None


def _status_text(code: int) -> str:
    return "OK" if 200 <= code < 300 else f"Invalid HTTP Response: {code}"


def _signatures(secret: str, body: bytes) -> dict[str, str]:
    return {
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


def _ids_of(payload: Any) -> tuple[str | None, int | None, int | None]:
    """(action, installation id, repository id) of a webhook payload, as GitHub lists them."""
    if not isinstance(payload, dict):
        return None, None, None
    action = payload.get("action")
    inst = payload.get("installation")
    repo = payload.get("repository")
    inst_id = inst.get("id") if isinstance(inst, dict) else None
    repo_id = repo.get("id") if isinstance(repo, dict) else None
    return (
        action if isinstance(action, str) else None,
        inst_id if isinstance(inst_id, int) else None,
        repo_id if isinstance(repo_id, int) else None,
    )


class HooksMixin:
    """The App's webhook for ``GitHubStandIn``; the attributes below are the stand-in's."""

    _lock: threading.RLock
    app_id: int
    api_url: str
    _need_jwt: Any

    # ------------------------------------------------------------------ state

    def _init_hooks(self) -> None:
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.delivery_timeout = 10.0
        self.hook_retention = timedelta(days=7)
        self.hook_id = 400_000_000 + self.app_id
        self.redelivery_requests: list[int] = []  # delivery ids whose redelivery was accepted
        self._hook_deliveries: dict[int, HookDelivery] = {}
        self._delivery_ids = itertools.count(31_000_000_001)
        self._hook_threads: list[threading.Thread] = []
        self._held: list[Callable[[], None]] | None = None

    def _stop_hooks(self) -> None:
        self.release_redeliveries()
        self.settle(timeout=5, strict=False)

    # ------------------------------------------------------------------ test API

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """The App's webhook configuration: where (re)deliveries go and the signing secret."""
        with self._lock:
            self.webhook_url = url
            self.webhook_secret = secret

    def deliver(
        self,
        event: str,
        payload: Any,
        *,
        url: str | None = None,
        secret: str | None = None,
        guid: str | None = None,
    ) -> HookDelivery:
        """Send one event now, like GitHub, and log the outcome. ``url`` and ``secret`` default
        to the webhook configuration (``set_webhook``)."""
        with self._lock:
            target = url or self.webhook_url
            key = secret if secret is not None else self.webhook_secret
        if not target:
            raise ValueError("no webhook URL: pass url= or call set_webhook() first")
        body = json.dumps(payload, separators=(",", ":")).encode()
        return self._send(_Sent(event, body, target, key, guid or str(uuid.uuid4())))

    def record_delivery(
        self,
        event: str,
        payload: Any,
        *,
        status_code: int,
        status: str | None = None,
        guid: str | None = None,
        delivered_at: datetime | None = None,
        redelivery: bool = False,
    ) -> HookDelivery:
        """Log a delivery to the configured webhook without sending it: history
        (``delivered_at`` in the past), or many deliveries at once. A redelivery of it is sent
        for real."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            sent = _Sent(
                event,
                body,
                self.webhook_url or "http://127.0.0.1:9/webhooks",
                self.webhook_secret,
                guid or str(uuid.uuid4()),
                redelivery=redelivery,
            )
            answer = _Answer(
                delivered_at=delivered_at or now(),
                status_code=status_code,
                status=status or (_status_text(status_code) if status_code else "timed out"),
                duration=0.05,
            )
            return self._log(sent, answer)

    @property
    def hook_deliveries(self) -> list[HookDelivery]:
        """Every logged delivery, oldest first."""
        with self._lock:
            return sorted(self._hook_deliveries.values(), key=lambda d: (d.delivered_at, d.id))

    def deliveries_of(self, guid: str) -> list[HookDelivery]:
        return [d for d in self.hook_deliveries if d.guid == guid]

    def hold_redeliveries(self) -> None:
        """Accept redeliveries (202) but send none until ``release_redeliveries()``."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release_redeliveries(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
            for send in held:
                self._start(send)

    def settle(self, timeout: float = 30, *, strict: bool = True) -> None:
        """Wait until every redelivery in progress has been sent and logged."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._hook_threads if t.is_alive()]
                self._hook_threads = threads
            if not threads:
                return
            for thread in threads:
                thread.join(max(deadline - time.monotonic(), 0))
            if time.monotonic() >= deadline and any(t.is_alive() for t in threads):
                if strict:
                    raise AssertionError(f"{len(threads)} redelivery(ies) still in progress")
                return

    # ------------------------------------------------------------------ sending

    def _send(self, sent: _Sent) -> HookDelivery:
        headers = {
            "Accept": "*/*",
            "Content-Type": "application/json",
            "User-Agent": HOOKSHOT_AGENT,
            "X-GitHub-Delivery": sent.guid,
            "X-GitHub-Event": sent.event,
            "X-GitHub-Hook-ID": str(self.hook_id),
            "X-GitHub-Hook-Installation-Target-ID": str(self.app_id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
        }
        if sent.secret:
            headers.update(_signatures(sent.secret, sent.body))
        started_at = now()
        start = time.monotonic()
        response_headers: dict[str, str] = {}
        response_body: str | None = None
        try:
            with httpx.Client(timeout=self.delivery_timeout, follow_redirects=False) as client:
                answer = client.post(sent.url, content=sent.body, headers=headers)
            status_code, status = answer.status_code, _status_text(answer.status_code)
            response_headers = dict(answer.headers)
            response_body = answer.text[:MAX_RESPONSE_BODY]
        except httpx.TimeoutException:
            status_code, status = 0, "timed out"
        except httpx.HTTPError:
            status_code, status = 0, "failed to connect"
        with self._lock:
            return self._log(
                sent,
                _Answer(
                    delivered_at=started_at,
                    status_code=status_code,
                    status=status,
                    duration=round(time.monotonic() - start, 3),
                    request_headers=headers,
                    response_headers=response_headers,
                    response_body=response_body,
                ),
            )

    def _log(self, sent: _Sent, answer: _Answer) -> HookDelivery:
        action, installation_id, repository_id = _ids_of(json.loads(sent.body))
        delivery = HookDelivery(
            id=next(self._delivery_ids),
            guid=sent.guid,
            event=sent.event,
            action=action,
            installation_id=installation_id,
            repository_id=repository_id,
            url=sent.url,
            body=sent.body,
            delivered_at=answer.delivered_at,
            redelivery=sent.redelivery,
            status_code=answer.status_code,
            status=answer.status,
            duration=answer.duration,
            request_headers=dict(answer.request_headers),
            response_headers=dict(answer.response_headers),
            response_body=answer.response_body,
            secret=sent.secret,
        )
        self._hook_deliveries[delivery.id] = delivery
        return delivery

    def _start(self, send: Callable[[], None]) -> None:
        thread = threading.Thread(target=send, name="github-standin-redelivery", daemon=True)
        self._hook_threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ JSON

    @staticmethod
    def _delivery_item(d: HookDelivery) -> dict[str, Any]:
        return {
            "id": d.id,
            "guid": d.guid,
            "delivered_at": iso(d.delivered_at),
            "redelivery": d.redelivery,
            "duration": d.duration,
            "status": d.status,
            "status_code": d.status_code,
            "event": d.event,
            "action": d.action,
            "installation_id": d.installation_id,
            "repository_id": d.repository_id,
            "throttled_at": None,
        }

    def _delivery_full(self, d: HookDelivery) -> dict[str, Any]:
        return {
            **self._delivery_item(d),
            "url": d.url,
            "request": {"headers": dict(d.request_headers), "payload": d.payload},
            "response": {"headers": dict(d.response_headers), "payload": d.response_body},
        }

    # ------------------------------------------------------------------ REST handlers

    def _h_list_hook_deliveries(self, *, auth: str | None, request: Request, **_: Any) -> Handled:
        self._need_jwt(auth)
        args = request.args
        try:
            per_page = min(max(int(args.get("per_page", 30)), 1), 100)
        except ValueError:
            per_page = 30
        wanted = args.get("status")
        if wanted is not None and wanted not in ("success", "failure"):
            raise ApiError(
                422,
                "Validation Failed",
                errors=[{"resource": "HookDelivery", "field": "status", "code": "invalid"}],
            )
        items = sorted(
            self._hook_deliveries.values(), key=lambda d: (d.delivered_at, d.id), reverse=True
        )
        if wanted == "success":
            items = [d for d in items if 200 <= d.status_code <= 399]
        elif wanted == "failure":
            items = [d for d in items if 400 <= d.status_code <= 599]
        start = 0
        cursor = args.get("cursor")
        if cursor is not None:
            match = CURSOR.fullmatch(cursor)
            ids = [d.id for d in items]
            if match is None or int(match.group(1)) not in ids:
                raise ApiError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "HookDelivery", "field": "cursor", "code": "invalid"}],
                )
            start = ids.index(int(match.group(1)))
        page = items[start : start + per_page]
        headers: dict[str, str] = {}
        if start + per_page < len(items):
            following = items[start + per_page]
            query = {"per_page": per_page, "cursor": f"v1_{following.id}"}
            if wanted is not None:
                query["status"] = wanted
            headers["Link"] = f'<{self.api_url}/app/hook/deliveries?{urlencode(query)}>; rel="next"'
        return 200, [self._delivery_item(d) for d in page], headers

    def _delivery(self, delivery_id: int) -> HookDelivery:
        found = self._hook_deliveries.get(delivery_id)
        if found is None:
            raise ApiError(404, "Not Found")
        return found

    def _h_get_hook_delivery(self, *, auth: str | None, delivery_id: int, **_: Any) -> Handled:
        self._need_jwt(auth)
        return 200, self._delivery_full(self._delivery(delivery_id)), {}

    def _h_redeliver_hook_delivery(
        self, *, auth: str | None, delivery_id: int, **_: Any
    ) -> Handled:
        self._need_jwt(auth)
        original = self._delivery(delivery_id)
        if now() - original.delivered_at > self.hook_retention:
            raise ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "HookDelivery",
                        "field": "delivered_at",
                        "code": "custom",
                        "message": "The delivery is too old to be redelivered.",
                    }
                ],
            )
        url = self.webhook_url or original.url
        secret = self.webhook_secret if self.webhook_url else original.secret
        event, body, guid = original.event, copy.copy(original.body), original.guid

        def send() -> None:
            self._send(_Sent(event, body, url, secret, guid, redelivery=True))

        self.redelivery_requests.append(delivery_id)
        if self._held is not None:
            self._held.append(send)
        else:
            self._start(send)
        return 202, {}, {}
