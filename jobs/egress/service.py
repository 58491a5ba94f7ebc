"""The egress process (`python -m jobs.egress.service`, the Procfile's `egress:` line).

The registries proxy (jobs/egress/proxy.py) parses hostile traffic: the sandbox's requests and TLS
handshakes. It runs here, in a process that holds neither the App's key, nor the model key, nor
the Docker socket, instead of inside the worker that holds the first and the last. A worker asks
it, over a control socket only the service's user can reach (jobs/common/control.py), to serve a
session's egress socket inside that session's control directory, and to close it when the
session ends; a proxy whose worker died is closed once the session's deadline has passed.

Protocol:
  {"op": "open", "session": ID, "socket": PATH, "expires_in": SECONDS} -> {"ok": true}
  {"op": "close", "session": ID} -> {"ok": true}
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from jobs.common.control import (
    ControlError,
    Leases,
    call,
    serve_leases,
    service_main,
    session_socket,
)
from jobs.common.settings import CommonSettings, EgressSettings
from jobs.egress.proxy import EgressProxy

log = logging.getLogger(__name__)

SOCKET_NAME = "egress.sock"


class EgressService:
    def __init__(self, settings: EgressSettings) -> None:
        self.root = settings.workspace_root.resolve()
        self.proxies: Leases[EgressProxy] = Leases("egress")

    def handle(self, request: dict) -> dict:
        op, session = request["op"], str(request["session"])
        if op == "open":
            self.open(session, Path(request["socket"]), float(request["expires_in"]))
            return {"ok": True}
        if op == "close":
            self.close(session)
            return {"ok": True}
        raise ControlError(f"unknown op {op!r}")

    def open(self, session: str, path: Path, expires_in: float) -> None:
        proxy = EgressProxy(session_socket(self.root, path, SOCKET_NAME))
        proxy.__enter__()
        self.proxies.put(session, proxy, expires_in)

    def close(self, session: str) -> None:
        self.proxies.close(session)


def serve(settings: EgressSettings, stop: threading.Event | None = None) -> None:
    service = EgressService(settings)
    serve_leases(settings.egress_socket, service.handle, service.proxies, stop or threading.Event())


@contextlib.contextmanager
def session_egress(
    settings: CommonSettings, session: str, path: Path, expires_in: float
) -> Iterator[None]:
    """Have the egress process serve the session's registries proxy on `path` meanwhile."""
    request = {"op": "open", "session": session, "socket": str(path), "expires_in": expires_in}
    call(settings.egress_socket, request, "egress service")
    try:
        yield
    finally:
        with contextlib.suppress(ControlError):
            call(settings.egress_socket, {"op": "close", "session": session}, "egress", 2.0)


def main() -> int:
    return service_main(EgressSettings, serve)


if __name__ == "__main__":
    sys.exit(main())
