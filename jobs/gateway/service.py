"""The gateway process (`python -m jobs.gateway.service`, the Procfile's `gateway:` line).

It alone holds the model credential, of whichever backend it is configured for
(jobs/gateway/backends.py: an API key, a Claude subscription token, an LLM gateway's bearer,
Amazon Bedrock or Google Vertex AI). A worker asks it, over a control socket only the service's
user can reach, to open a per-session gateway (jobs/gateway/proxy.py) on a socket inside that
session's control directory, and to close it when the session ends. So neither the worker,
which runs git over hostile work trees, nor the sandbox ever holds the credential; and a gateway
whose worker died is closed by the service once the session's deadline has passed.

Protocol (jobs/common/control.py):
  {"op": "open", "session": ID, "socket": PATH, "budget_usd": X|null, "expires_in": SECONDS,
   "models": [...]|null, "relay": URL}
      -> {"ok": true, "key": SESSION_KEY, "cli_env": {...}}
  `relay` is where the sandbox CLI reaches the gateway; `cli_env` what it needs set to use the
  backend through it (the session key, and nothing else secret).
  {"op": "close", "session": ID}  -> {"ok": true, "usage": {...}}
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jobs.common.control import (
    ControlError,
    ControlServer,
    Leases,
    call,
    serve_leases,
    service_main,
    session_socket,
)
from jobs.common.redact import redactor
from jobs.common.settings import CONFIG_ERROR_EXIT, CommonSettings, ConfigError, GatewaySettings
from jobs.gateway.backends import selected
from jobs.gateway.proxy import Allowance, ModelGateway

log = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"


class GatewayError(ControlError):
    """The gateway service refused or could not be reached."""


class GatewayService:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.root = settings.workspace_root.resolve()
        self.backend = selected(settings)
        log.info("gateway: model backend: %s", self.backend.describe())
        self.gateways: Leases[ModelGateway] = Leases("gateway")

    def handle(self, request: dict) -> dict:
        op, session = request["op"], str(request["session"])
        if op == "open":
            return self.open(
                session,
                Path(request["socket"]),
                request.get("budget_usd"),
                float(request["expires_in"]),
                request.get("models"),
                str(request.get("relay") or ""),
            )
        if op == "close":
            return {"ok": True, "usage": self.close(session)}
        raise GatewayError(f"unknown op {op!r}")

    def open(
        self,
        session: str,
        path: Path,
        budget_usd: float | None,
        expires_in: float,
        models: list[str] | None = None,
        relay: str = "",
    ) -> dict:
        if not relay.startswith("http://"):
            raise GatewayError("open: relay must be the sandbox's http:// URL of the gateway")
        resolved = session_socket(self.root, path, SOCKET_NAME)
        deadline = time.monotonic() + expires_in
        gateway = ModelGateway(
            resolved,
            self.backend,
            Allowance(budget_usd=budget_usd, expires_at=deadline, allowed_models=models),
        )
        gateway.__enter__()
        self.gateways.put(session, gateway, expires_in)
        key = gateway.session_key
        return {"ok": True, "key": key, "cli_env": self.backend.cli_env(relay, key)}

    def close(self, session: str) -> dict:
        gateway = self.gateways.close(session)
        return gateway.usage.as_dict() if gateway else {}


def serve(settings: GatewaySettings, stop: threading.Event | None = None) -> None:
    try:
        service = GatewayService(settings)
    except ConfigError as exc:  # the backend's own variables: one line, as for the others
        print(f"configuration: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
    for secret in service.backend.secrets():  # also credentials botocore found by itself
        redactor.add(secret)
    serve_leases(
        settings.gateway_socket, service.handle, service.gateways, stop or threading.Event()
    )


@contextlib.contextmanager
def embedded(settings: GatewaySettings) -> Iterator[None]:
    """This service inside the calling process, on `settings.gateway_socket`, for the block:
    `claudecluster run` on a machine with no gateway process. The credential stays in this
    process; the sandbox still learns only a session's key. ConfigError for a backend that
    lacks a variable."""
    service = GatewayService(settings)
    for secret in service.backend.secrets():  # also credentials botocore found by itself
        redactor.add(secret)
    control = ControlServer(settings.gateway_socket, service.handle)
    try:
        yield
    finally:
        control.close()
        service.gateways.close_all()


def listening(settings: CommonSettings) -> bool:
    """Whether a gateway service answers on the control socket (a probe that opens nothing)."""
    try:
        call(settings.gateway_socket, {"op": "close", "session": "probe"}, "gateway service", 0)
    except (ControlError, OSError):  # not there, refused, or another user's socket
        return False
    return True


def _call(settings: CommonSettings, request: dict, wait: float = 10.0) -> dict:
    try:
        return call(settings.gateway_socket, request, "gateway service", wait)
    except ControlError as exc:
        raise GatewayError(str(exc)) from None


@dataclass
class SessionGateway:
    """A session's gateway as the worker sees it: the key the CLI presents, the environment the
    CLI needs to use the backend through the relay (no credential in it), and, once it is
    closed, the gateway's own account of what the session used (its `Usage.as_dict()`)."""

    key: str
    cli_env: dict[str, str] = field(default_factory=dict)
    usage: dict = field(default_factory=dict)


@contextlib.contextmanager
def session_gateway(
    settings: CommonSettings,
    session: str,
    path: Path,
    budget_usd: float | None,
    expires_in: float,
    models: list[str] | None = None,
    relay: str = "http://127.0.0.1:8787",
) -> Iterator[SessionGateway]:
    """Open the session's gateway in the gateway process; yields its key, then its usage.

    `models`: the model names or families it lets through (None: any); `relay`: where the
    sandbox CLI reaches the gateway (the sandbox's RELAY_URL)."""
    answer = _call(
        settings,
        {
            "op": "open",
            "session": session,
            "socket": str(path),
            "budget_usd": budget_usd,
            "expires_in": expires_in,
            "models": models,
            "relay": relay,
        },
    )
    lease = SessionGateway(answer["key"], dict(answer.get("cli_env") or {}))
    try:
        yield lease
    finally:
        with contextlib.suppress(GatewayError):
            closed = _call(settings, {"op": "close", "session": session}, wait=2.0)
            lease.usage = closed.get("usage") or {}


def main() -> int:
    return service_main(GatewaySettings, serve)


if __name__ == "__main__":
    sys.exit(main())
