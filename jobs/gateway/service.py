"""The gateway process (`python -m jobs.gateway.service`, the Procfile's `gateway:` line).

It alone holds the real model key. A worker asks it, over a control socket only the service's
user can reach, to open a per-session gateway (jobs/gateway/proxy.py) on a socket inside that
session's control directory, and to close it when the session ends. So neither the worker, which
runs git over hostile work trees, nor the sandbox ever holds the key; and a gateway whose worker
died is closed by the service once the session's deadline has passed.

Protocol (jobs/common/control.py):
  {"op": "open", "session": ID, "socket": PATH, "budget_usd": X|null, "expires_in": SECONDS}
      -> {"ok": true, "key": SESSION_KEY}
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
from jobs.common.settings import CommonSettings, GatewaySettings
from jobs.gateway.proxy import Allowance, ModelGateway

log = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"


class GatewayError(ControlError):
    """The gateway service refused or could not be reached."""


class GatewayService:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.root = settings.workspace_root.resolve()
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
    ) -> dict:
        resolved = session_socket(self.root, path, SOCKET_NAME)
        deadline = time.monotonic() + expires_in
        gateway = ModelGateway(
            resolved,
            self.settings.anthropic_base_url,
            self.settings.anthropic_api_key.get_secret_value(),
            Allowance(budget_usd=budget_usd, expires_at=deadline, allowed_models=models),
        )
        gateway.__enter__()
        self.gateways.put(session, gateway, expires_in)
        return {"ok": True, "key": gateway.session_key}

    def close(self, session: str) -> dict:
        gateway = self.gateways.close(session)
        return gateway.usage.as_dict() if gateway else {}


def serve(settings: GatewaySettings, stop: threading.Event | None = None) -> None:
    service = GatewayService(settings)
    serve_leases(
        settings.gateway_socket, service.handle, service.gateways, stop or threading.Event()
    )


@contextlib.contextmanager
def embedded(settings: GatewaySettings) -> Iterator[None]:
    """This service inside the calling process, on `settings.gateway_socket`, for the block:
    `claudecluster run` on a machine with no gateway process. The key stays in this process;
    the sandbox still learns only a session's key."""
    service = GatewayService(settings)
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
    """A session's gateway as the worker sees it: the key the CLI presents, and, once it is
    closed, the gateway's own account of what the session used (its `Usage.as_dict()`)."""

    key: str
    usage: dict = field(default_factory=dict)


@contextlib.contextmanager
def session_gateway(
    settings: CommonSettings,
    session: str,
    path: Path,
    budget_usd: float | None,
    expires_in: float,
    models: list[str] | None = None,
) -> Iterator[SessionGateway]:
    """Open the session's gateway in the gateway process; yields its key, then its usage.

    `models`: the model names or families it lets through (None: any)."""
    answer = _call(
        settings,
        {
            "op": "open",
            "session": session,
            "socket": str(path),
            "budget_usd": budget_usd,
            "expires_in": expires_in,
            "models": models,
        },
    )
    lease = SessionGateway(answer["key"])
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
