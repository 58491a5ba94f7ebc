"""The egress process: the registries proxy runs outside the worker, opened per session on request.

The real process (`python -m jobs.egress.service`, as the Procfile starts it) and the worker's
side of the protocol. What the proxy lets through is tested in tests/test_egress.py, and end to
end in tests/e2e/test_trust.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from jobs.common.control import ControlError
from jobs.common.settings import WorkerSettings
from jobs.egress.service import session_egress
from tests.support import ROOT, wait_for


@pytest.fixture
def service(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_"))}
    env["WORKSPACE_ROOT"] = str(tmp_path / "ws")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.egress.service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    settings = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path / "ws"))
    wait_for(
        lambda: settings.egress_socket.exists() or proc.poll() is not None,
        20,
        what="the egress service",
    )
    assert proc.poll() is None, proc.communicate()[0].decode()
    yield settings
    proc.terminate()
    proc.communicate(timeout=20)


def control_dir(settings):
    path = settings.workspace_root / "s-1" / "control"
    path.mkdir(parents=True)
    return path


def connect(sock_path, target: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(sock_path))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


def test_a_sessions_proxy_is_served_by_the_egress_process_until_closed(service):
    sock = control_dir(service) / "egress.sock"
    with session_egress(service, "session-1", sock, 60):
        assert sock.exists() and oct(sock.stat().st_mode & 0o777) == "0o666"
        # Publishing to PyPI goes to a host of its own, which is not a registry to fetch from.
        assert connect(sock, "upload.pypi.org:443").startswith(b"HTTP/1.1 403")
        assert connect(sock, "evil.example:443").startswith(b"HTTP/1.1 403")
    assert not sock.exists(), "closing the session removes its socket"


def test_the_control_socket_is_the_services_users_alone(service):
    assert oct(service.egress_socket.stat().st_mode & 0o777) == "0o600"


def test_sockets_only_inside_a_sessions_control_directory(service, tmp_path):
    with (
        pytest.raises(ControlError, match="only as egress.sock under WORKSPACE_ROOT"),
        session_egress(service, "s2", tmp_path / "elsewhere" / "egress.sock", 60),
    ):
        pass
    sneaky = service.workspace_root / "s-2" / "control" / ".." / ".." / ".." / "egress.sock"
    with pytest.raises(ControlError), session_egress(service, "s3", sneaky, 60):
        pass


def test_no_service_is_a_clear_error(tmp_path):
    settings = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path))
    with (
        pytest.raises(ControlError, match="the egress service is not running"),
        session_egress(settings, "s", tmp_path / "s-1" / "control" / "egress.sock", 60),
    ):
        pass
