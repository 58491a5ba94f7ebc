"""Running the real `claude` CLI headless in a fresh, locked-down container.

The container has no network (only its own loopback; the model is reached through the gateway's
Unix socket), runs as a non-root user with every capability dropped and no way to gain one, on a
read-only root filesystem: the CLI writes only to two size-limited tmpfs (/tmp and its config dir)
and to the session's work tree. The control dir (gateway socket, prompt, setup commands) is
mounted read-only. Namespaces are its own (IPC and cgroup included), and memory, CPU, processes,
file sizes, the work tree's size and the wall clock are all limited. Hitting a limit ends that
session alone, with a reason the tracking comment can show ("ran out of memory").

Labels name the session so a reaper can find anything a crashed worker left behind. Whatever
happens, the container is removed before `run` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound
from docker.types import LogConfig, Ulimit
from docker.utils import parse_bytes

from jobs.common.settings import WorkerSettings
from jobs.sandbox.transcript import Outcome, Transcript

log = logging.getLogger(__name__)

LABEL = "claudecluster.session"
CONTROL_DIR = "/run/claudecluster"
WORKSPACE = "/workspace"
CONFIG_DIR = "/home/node/.claude"  # the image's CLAUDE_CONFIG_DIR
RELAY_PORT = 8787
SETUP_FAILED = 3  # the entrypoint's exit status when the repository's setup commands fail
ENTRY_COST = 4096  # what an entry of the work tree costs at least (an inode, a block)
# What the worker holds of the sandbox's output: the CLI prints one stream-json event per line,
# none near a megabyte; a longer line is skipped, and a session that prints more than all of
# this in total is ended, so that a flood cannot grow the worker.
MAX_LINE = 1 << 20
MAX_OUTPUT = 128 << 20
STDERR_TAIL = 64 << 10


class SandboxError(RuntimeError):
    """The container could not be run at all (engine down, image missing, start refused)."""


@dataclass
class SandboxRun:
    outcome: Outcome
    exit_code: int | None
    timed_out: bool
    stderr_tail: str
    stopped: bool = False
    # The resource limit that ended the run ("the sandbox ran out of memory …"), if one did; it is
    # also the outcome's failure reason.
    limit: str = ""


@dataclass(frozen=True)
class Limits:
    """What one run may spend; the service's defaults, narrowed by the repository's config."""

    timeout: int
    max_turns: int
    model: str | None = None
    max_budget_usd: float | None = None
    # The maintainers' extra instructions (.github/claude.yml `instructions`).
    append_system_prompt: str = ""


class OutputReader:
    """Splits the sandbox's stdout into lines for `on_line`, holding at most one bounded line.

    `feed` answers False once more than `max_total` bytes came in all; the caller ends the run.
    """

    def __init__(
        self, on_line: Callable[[str], None], max_line: int = MAX_LINE, max_total: int = MAX_OUTPUT
    ) -> None:
        self._on_line = on_line
        self._max_line = max_line
        self._max_total = max_total
        self._pending = bytearray()
        self._skipping = False  # inside a line that is already too long
        self.total = 0
        self.skipped = 0

    def feed(self, chunk: bytes) -> bool:
        self.total += len(chunk)
        if self.total > self._max_total:
            return False
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._take(chunk[start:end])
            if not self._skipping:
                self._on_line(self._pending.decode("utf-8", "replace"))
            self._pending.clear()
            self._skipping = False
            start = end + 1
        self._take(chunk[start:])
        return True

    def close(self) -> None:
        if self._pending and not self._skipping:
            self._on_line(self._pending.decode("utf-8", "replace"))
        self._pending.clear()

    def _take(self, piece: bytes) -> None:
        if self._skipping:
            return
        if len(self._pending) + len(piece) > self._max_line:
            self._pending.clear()
            self._skipping = True
            self.skipped += 1
        else:
            self._pending += piece


def sandbox_user() -> str:
    # The image's `node` user (uid 1000); a non-root worker runs it as itself so that it can
    # still read and delete what the agent wrote.
    return "1000:1000" if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}"


def tree_usage(root: Path) -> int:
    """What the tree costs on disk, counted so that neither sparse files nor empty ones are free.

    Symlinks are not followed; entries that vanish while it counts are skipped.
    """
    total = 0
    pending = [os.fspath(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += max(st.st_size, st.st_blocks * 512, ENTRY_COST)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
        except OSError:
            continue
    return total


class Sandbox:
    def __init__(self, settings: WorkerSettings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except DockerException as exc:
                raise SandboxError(f"the Docker engine is not reachable ({exc})") from None
        return self._client

    def command(self, limits: Limits, extra: list[str]) -> list[str]:
        """`extra` replaces the permission bypass when given (a review is read-only)."""
        cmd = [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--max-turns",
            str(limits.max_turns),
        ]
        if not extra:
            # Safe only because the container is the boundary: no network, no credentials.
            # The repository's own .claude/ settings and .mcp.json are not trusted either.
            cmd += [
                "--dangerously-skip-permissions",
                "--setting-sources=user",
                "--strict-mcp-config",
            ]
        if limits.model:
            cmd += ["--model", limits.model]
        if limits.max_budget_usd:
            cmd += ["--max-budget-usd", f"{limits.max_budget_usd:g}"]
        if limits.append_system_prompt:
            cmd += [f"--append-system-prompt={limits.append_system_prompt}"]
        return cmd + extra

    def create(
        self,
        session_id: str,
        tree: Path,
        control: Path,
        command: list[str],
        environment: dict[str, str] | None = None,
    ):
        """The session's container, created (not started) with every restriction in place."""
        s = self.settings
        uid, gid = sandbox_user().split(":")
        owned = f"uid={uid},gid={gid}"
        return self.client.containers.create(
            s.agent_image,
            command=command,
            user=f"{uid}:{gid}",
            working_dir=WORKSPACE,
            environment=environment or {},
            labels={LABEL: session_id, "claudecluster.role": "sandbox"},
            runtime=s.sandbox_runtime,
            # No network: the container gets a loopback of its own and nothing else (no route,
            # no other interface); its own namespaces for IPC and cgroups too.
            network_mode="none",
            ipc_mode="private",
            cgroupns="private",
            # The image is read-only; the CLI writes to /tmp and its config dir (tmpfs, sized),
            # the agent to the work tree. The control dir is read-only: a Unix socket can be
            # connected to on a read-only mount.
            read_only=True,
            tmpfs={
                "/tmp": f"rw,exec,nosuid,nodev,size={s.sandbox_tmp_size},{owned},mode=1777",
                CONFIG_DIR: f"rw,nosuid,nodev,size={s.sandbox_config_size},{owned},mode=0700",
            },
            volumes={
                str(tree): {"bind": WORKSPACE, "mode": "rw"},
                str(control): {"bind": CONTROL_DIR, "mode": "ro"},
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=s.sandbox_memory,
            memswap_limit=s.sandbox_memory,
            nano_cpus=int(s.sandbox_cpus * 1e9),
            pids_limit=s.sandbox_pids,
            ulimits=[
                # No core dumps (they would land in the work tree), and no single file larger
                # than the whole work tree may be.
                Ulimit(name="core", soft=0, hard=0),
                Ulimit(name="fsize", soft=self.workspace_limit, hard=self.workspace_limit),
            ],
            # Should the host itself run short of memory, a sandbox goes before the service.
            oom_score_adj=500,
            # The worker reads the output as it comes (attached, bounded); a log file kept by
            # the engine would grow on the host with whatever the sandbox prints.
            log_config=LogConfig(type=LogConfig.types.NONE),
            init=True,
        )

    @property
    def workspace_limit(self) -> int:
        return int(parse_bytes(self.settings.sandbox_workspace_size))

    def run(
        self,
        session_id: str,
        tree: Path,
        control: Path,
        session_key: str,
        prompt: str,
        limits: Limits,
        extra_args: list[str] | None = None,
        on_action: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        setup: tuple[str, ...] = (),
    ) -> SandboxRun:
        (control / "prompt.md").write_text(prompt)
        os.chmod(control / "prompt.md", 0o644)
        if setup:
            # Run by the image's entrypoint inside the sandbox, never by the worker.
            (control / "setup.sh").write_text("\n".join(setup) + "\n")
            os.chmod(control / "setup.sh", 0o644)
        try:
            self.client.images.get(self.settings.agent_image)
        except ImageNotFound:
            raise SandboxError(
                f"the agent image {self.settings.agent_image} is not built"
                " (run `bash scripts/build-images.sh`)"
            ) from None
        except DockerException as exc:
            raise SandboxError(f"the Docker engine is not reachable ({exc})") from None
        if self._workspace_over(tree):
            raise SandboxError(
                "the checkout alone is larger than the workspace may grow "
                f"({self.settings.sandbox_workspace_size}, SANDBOX_WORKSPACE_SIZE)"
            )
        environment = {
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{RELAY_PORT}",
            "ANTHROPIC_API_KEY": session_key,
            "CLAUDECLUSTER_RELAY_PORT": str(RELAY_PORT),
            "CLAUDE_CODE_MAX_RETRIES": str(self.settings.model_retries),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
        try:
            container = self.create(
                session_id, tree, control, self.command(limits, extra_args or []), environment
            )
        except DockerException as exc:
            raise SandboxError(f"the sandbox container could not be created ({exc})") from None
        try:
            return self._watch(container, tree, limits.timeout, on_action, should_stop)
        finally:
            try:
                container.remove(force=True)
            except DockerException as exc:
                log.warning("sandbox %s: removal failed (%s)", session_id, exc)

    def _watch(self, container, tree: Path, timeout: int, on_action, should_stop) -> SandboxRun:
        transcript = Transcript(on_action)
        timed_out = threading.Event()
        stopped = threading.Event()
        finished = threading.Event()
        hit: list[str] = []  # the first limit reached
        hit_lock = threading.Lock()

        def kill() -> None:
            with contextlib.suppress(DockerException):  # already gone
                container.kill()

        def limit_reached(reason: str, end: bool = True) -> None:
            with hit_lock:
                if hit:
                    return
                hit.append(reason)
            log.warning("sandbox %s: %s", container.short_id, reason)
            if end:
                kill()

        def stop_at_deadline() -> None:
            timed_out.set()
            kill()

        def monitor() -> None:
            # `/claude stop` sets a flag in Redis; killing the container ends the log stream.
            # The work tree and the process count are checked here too: the engine enforces
            # neither as a limit that would end the run.
            ticks = 0
            next_scan = 0.0
            while not finished.wait(self.settings.sandbox_check_interval):
                ticks += 1
                try:
                    if should_stop is not None and should_stop():
                        stopped.set()
                        kill()
                        return
                except Exception as exc:  # Redis away for a moment: the limits still count
                    log.warning("sandbox: stop check failed (%s)", type(exc).__name__)
                if time.monotonic() >= next_scan:
                    # A big tree takes a while to walk: walk it at most a fifth of the time.
                    started = time.monotonic()
                    if reason := self._workspace_over(tree):
                        limit_reached(reason)
                        return
                    next_scan = started + 5 * (time.monotonic() - started)
                if ticks % 2 == 0 and (reason := self._processes_at_limit(container)):
                    limit_reached(reason)
                    return

        def watch_oom(events) -> None:
            # The kernel kills the biggest process of the container; the run ends with it, or
            # the agent would go on in a sandbox that has just run out of memory.
            with contextlib.suppress(Exception):  # the stream is closed when the run ends
                for event in events:
                    if event.get("status") == "oom" or event.get("Action") == "oom":
                        limit_reached(self._memory_reason())
                        return

        try:
            events = self.client.events(
                decode=True, filters={"container": container.id, "event": "oom"}
            )
        except DockerException as exc:
            log.warning("sandbox: no OOM events (%s); relying on the container's state", exc)
            events = None
        timer = threading.Timer(timeout, stop_at_deadline)
        stderr_tail = b""
        try:
            if events is not None:
                threading.Thread(target=watch_oom, args=(events,), daemon=True).start()
            # Attached before the start, so that not a byte is missed; no log driver keeps it.
            try:
                output = container.attach(
                    stdout=True, stderr=True, stream=True, logs=False, demux=True
                )
                container.start()
            except DockerException as exc:
                raise SandboxError(f"the sandbox container did not start ({exc})") from None
            threading.Thread(target=monitor, daemon=True).start()
            timer.start()
            reader = OutputReader(transcript.feed)
            for out, err in output:
                if err:
                    stderr_tail = (stderr_tail + err)[-STDERR_TAIL:]
                if out and not reader.feed(out):
                    limit_reached(
                        f"the sandbox printed more than {MAX_OUTPUT >> 20} MiB of output", end=False
                    )
                    break
            # Closed before the kill: the engine would otherwise wait, with the container, on a
            # reader that no longer reads.
            with contextlib.suppress(Exception):
                output.close()
            if hit:
                kill()
            reader.close()
            if reader.skipped:
                log.warning(
                    "sandbox %s: %d output lines over %d bytes were skipped",
                    container.short_id,
                    reader.skipped,
                    MAX_LINE,
                )
            status = container.wait(timeout=60)
        finally:
            timer.cancel()
            finished.set()
            if events is not None:
                with contextlib.suppress(Exception):
                    events.close()
        # The OOM event can lose the race with the exit; the container's state cannot.
        with contextlib.suppress(DockerException):
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                limit_reached(self._memory_reason(), end=False)
        if reason := self._workspace_over(tree):  # grown since the last check
            limit_reached(reason, end=False)
        stderr = "\n".join(stderr_tail.decode("utf-8", "replace").splitlines()[-20:])
        outcome = transcript.outcome
        if hit:
            outcome.is_error = True
            outcome.errors = [hit[0]]
            outcome.last_api_error = hit[0]  # the failure reason when no result event came
        elif status.get("StatusCode") == SETUP_FAILED:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            outcome.setup_failed = " / ".join(lines[-4:])[-800:]
        return SandboxRun(
            outcome=outcome,
            exit_code=status.get("StatusCode"),
            timed_out=timed_out.is_set(),
            stderr_tail=stderr.strip()[-2000:],
            stopped=stopped.is_set(),
            limit=hit[0] if hit else "",
        )

    def _memory_reason(self) -> str:
        return f"the sandbox ran out of memory (its limit is {self.settings.sandbox_memory})"

    def _workspace_over(self, tree: Path) -> str:
        if tree_usage(tree) <= self.workspace_limit:
            return ""
        return (
            "the workspace grew past its limit of "
            f"{self.settings.sandbox_workspace_size} (SANDBOX_WORKSPACE_SIZE)"
        )

    def _processes_at_limit(self, container) -> str:
        try:
            stats = self.client.api.stats(container.id, stream=False, one_shot=True)
        except Exception:  # stats are best effort (gone, or not offered by the runtime)
            return ""
        current = (stats.get("pids_stats") or {}).get("current") or 0
        if current < self.settings.sandbox_pids:
            return ""
        return f"the sandbox hit its limit of {self.settings.sandbox_pids} processes"
