"""The sandbox's parts, as the worker will use them: the OCI runtime and the agent image.

The image is tried the way a session runs it, through `Sandbox.create` (no network, read-only,
no capabilities, the configured runtime), with `claude --version` for the command: an image
that starts here starts for a session.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from jobs.cli.checks import Check
from jobs.common.settings import WorkerSettings
from jobs.sandbox.container import Sandbox, SandboxError

VERSION_TIMEOUT = 120  # a cold gVisor start on a loaded machine is slow


def runtime_check(settings: WorkerSettings, client: docker.DockerClient) -> Check:
    wanted = settings.sandbox_runtime
    try:
        registered = sorted((client.info().get("Runtimes") or {}).keys())
    except DockerException as exc:
        return Check("sandbox runtime", False, f"the engine did not list its runtimes ({exc})")
    if wanted not in registered:
        return Check(
            "sandbox runtime",
            False,
            f"SANDBOX_RUNTIME={wanted} is not registered with dockerd (it has: "
            f'{", ".join(registered) or "none"}): add it under "runtimes" in '
            "/etc/docker/daemon.json and restart dockerd (see .ci/run), or set SANDBOX_RUNTIME "
            "to one of those",
        )
    return Check("sandbox runtime", True, f"{wanted} is registered")


def image_check(settings: WorkerSettings, client: docker.DockerClient, runtime_ok: bool) -> Check:
    image = settings.agent_image
    try:
        client.images.get(image)
    except ImageNotFound:
        return Check(
            "agent image",
            False,
            f"{image} is missing: build it with `bash scripts/build-images.sh`",
        )
    except DockerException as exc:
        return Check("agent image", False, f"{image} could not be inspected ({exc})")
    if not runtime_ok:
        return Check("agent image", True, f"{image} is present (not started: no runtime)")
    try:
        version = cli_version(settings, client)
    except (DockerException, SandboxError) as exc:
        return Check(
            "agent image",
            False,
            f"{image} is present but `claude --version` did not run in the sandbox ({exc}): "
            "rebuild it with `bash scripts/build-images.sh --force`",
        )
    return Check("agent image", True, f"{image}, Claude Code {version}")


def cli_version(settings: WorkerSettings, client: docker.DockerClient) -> str:
    settings.workspace_root.mkdir(parents=True, exist_ok=True)
    # Laid out as a session's workspace: the sandbox's conversation dir goes beside the control.
    with tempfile.TemporaryDirectory(dir=settings.workspace_root, prefix="doctor-") as root:
        tree, control = Path(root) / "tree", Path(root) / "control"
        tree.mkdir()
        control.mkdir()
        sandbox = Sandbox(settings, client)
        container = sandbox.create(
            f"doctor-{uuid.uuid4().hex[:12]}", tree, control, ["claude", "--version"]
        )
        try:
            # Attached before the start: the sandbox keeps no log to read afterwards.
            output = container.attach(stdout=True, stderr=True, stream=True, logs=False)
            container.start()
            text = b"".join(output).decode(errors="replace").strip()
            status = container.wait(timeout=VERSION_TIMEOUT).get("StatusCode")
        finally:
            container.remove(force=True)
    if status != 0 or not text:
        last = text.splitlines()[-1] if text else "no output"
        raise SandboxError(f"exit status {status}: {last}")
    return text.splitlines()[-1].removesuffix(" (Claude Code)")
