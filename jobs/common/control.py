"""The control socket of a service process (the model gateway, the egress proxy).

A service holds what the worker must not (the model key; hostile traffic to parse) and opens
per-session sockets on request. The worker asks over a Unix socket that only the service's user
can reach. Protocol: one JSON object per line, one answer per request, one request per
connection; every answer has `ok`, and `error` when it is false.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from jobs.common.logs import configure_logging
from jobs.common.redact import redactor
from jobs.common.settings import CONFIG_ERROR_EXIT, CommonSettings, settings_at_start

MAX_REQUEST = 64 * 1024
GRACE = 60  # seconds a session's socket outlives its deadline before the janitor closes it
log = logging.getLogger(__name__)


class ControlError(RuntimeError):
    """The service refused, or could not be reached; the message says which."""


Handle = Callable[[dict], dict]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128
    handle_request_dict: Handle


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST) or b"{}")
            if not isinstance(request, dict):
                raise TypeError("not an object")
            answer = self.server.handle_request_dict(request)
        except (ValueError, TypeError, KeyError) as exc:
            answer = {"ok": False, "error": f"bad request: {type(exc).__name__}"}
        except ControlError as exc:
            answer = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class ControlServer:
    """Serve `handle` on `path` (mode 0600) in a background thread until `close()`."""

    def __init__(self, path: Path, handle: Handle) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the service's own user only
        try:
            self._server = _Server(str(path), _Handler)
        finally:
            os.umask(old_umask)
        self._server.handle_request_dict = handle
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def call(path: Path, request: dict, what: str, wait: float = 10.0) -> dict:
    """Ask the service on `path`; waits up to `wait` seconds for it to come up."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(30)
                conn.connect(str(path))
                conn.sendall(json.dumps(request).encode() + b"\n")
                answer = json.loads(conn.makefile("rb").readline() or b"{}")
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() > deadline:  # the service may still be starting
                raise ControlError(f"the {what} is not running ({exc.strerror})") from None
            time.sleep(0.2)
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or f"the {what} refused")
    return answer


def session_socket(root: Path, path: Path, name: str) -> Path:
    """`path` resolved, if it is a socket called `name` somewhere under `root` (a session's
    control directory); the protocol must not plant sockets elsewhere."""
    resolved = path.parent.resolve() / path.name
    if path.name != name or root.resolve() not in resolved.parents:
        raise ControlError(f"sockets are opened only as {name} under WORKSPACE_ROOT")
    return resolved


S = TypeVar("S", bound=CommonSettings)


def service_main(settings_class: type[S], serve: Callable[[S, threading.Event], None]) -> int:
    """A service process's `main`: its settings (or one line naming what is wrong, and
    CONFIG_ERROR_EXIT), logs redacted, and `serve` until SIGTERM or SIGINT."""
    settings = settings_at_start(settings_class)
    if settings is None:
        return CONFIG_ERROR_EXIT
    configure_logging(redactor.learn(settings), log_format=settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(settings, stop)
    return 0


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Leases(Generic[C]):
    """What a service serves per session (a gateway, a proxy), each until its deadline: a
    session whose worker died is closed by the janitor once the deadline has passed."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._open: dict[str, tuple[C, float]] = {}
        self._lock = threading.Lock()

    def put(self, session: str, resource: C, expires_in: float) -> None:
        with self._lock:
            old = self._open.pop(session, None)
            self._open[session] = (resource, time.monotonic() + expires_in)
        if old:
            old[0].close()
        log.info("%s opened for %s", self.what, session)

    def close(self, session: str) -> C | None:
        with self._lock:
            entry = self._open.pop(session, None)
        if entry is None:
            return None
        entry[0].close()
        log.info("%s closed for %s", self.what, session)
        return entry[0]

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [s for s, (_, deadline) in self._open.items() if now > deadline + GRACE]
        for session in stale:
            self.close(session)

    def close_all(self) -> None:
        for session in list(self._open):
            self.close(session)


def serve_leases(path: Path, handle: Handle, leases: Leases, stop: threading.Event) -> None:
    """Answer `handle` on the control socket `path` and sweep `leases` until `stop` is set."""
    control = ControlServer(path, handle)
    log.info("%s service listening on %s", leases.what, path)
    try:
        while not stop.wait(5):
            leases.sweep()
    finally:
        control.close()
        leases.close_all()
