"""Running the real `claude` CLI headless in a fresh, locked-down container.

The container has no network (only its own loopback; the model is reached through the gateway's
Unix socket), runs as a non-root user with every capability dropped and no way to gain one, on a
read-only root filesystem: the CLI writes only to two size-limited tmpfs (/tmp and its config dir),
to the session's work tree and to its conversation dir (the config dir's `projects/`, where the
transcript lives: a per-session directory on the host, counted with the tree's size). The
control dir (gateway socket, prompt, setup commands) is mounted read-only. Namespaces are its
own (IPC and cgroup included), and memory, CPU, processes, file sizes, the work tree's size and
the wall clock are all limited. Hitting a limit ends that session alone, with a reason the
tracking comment can show ("ran out of memory").

Labels name the session so a reaper can find anything a crashed worker left behind. Whatever
happens, the container is removed before `run` returns.

A warm container (jobs/sandbox/pool.py) was created with these same options, from `options`
alone, before the session existed; when the session's workspace is a claimed pool slot, `run`
execs the entrypoint and the CLI in it instead of creating one, and falls back to a fresh one when
the slot is gone or no longer matches (the image rebuilt, the settings changed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
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
from jobs.sandbox.conversation import ConversationError, read_out, seed
from jobs.sandbox.host import HOST_LABEL, HostUnknown, worker_host
from jobs.sandbox.transcript import Outcome, Transcript

log = logging.getLogger(__name__)

LABEL = "claudecluster.session"
ROLE_LABEL = "claudecluster.role"
POOL_ROLE = "pool"  # a warm container of jobs/sandbox/pool.py
OPTIONS_LABEL = "claudecluster.options"  # a warm container's `options_digest`
SLOT_FILE = "slot-container"  # in a claimed slot's workspace root: its warm container's id
CONTROL_DIR = "/run/claudecluster"
WORKSPACE = "/workspace"
CONFIG_DIR = "/home/node/.claude"  # the image's CLAUDE_CONFIG_DIR
PROJECTS_DIR = f"{CONFIG_DIR}/projects"  # where the CLI keeps its transcripts
VERSION_LABEL = "claudecluster.claude-code-version"  # the agent image's CLI version
RELAY_PORT = 8787
RELAY_URL = f"http://127.0.0.1:{RELAY_PORT}"  # where the CLI reaches the gateway from inside
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
    # From `run`'s call to the CLI's command running in the sandbox; whether it was a warm one.
    ready_seconds: float = 0.0
    warm: bool = False
    # The resource limit that ended the run ("the sandbox ran out of memory …"), if one did; it is
    # also the outcome's failure reason.
    limit: str = ""
    # The CLI's transcript as the sandbox left it (unchecked bytes), for a job with a
    # `Conversation`; else why there is none.
    transcript: bytes | None = None
    transcript_problem: str = ""


@dataclass(frozen=True)
class Conversation:
    """The CLI session a run belongs to: `earlier` is the thread's transcript to resume (placed
    where the CLI reads it, run with `--resume`); None starts the session `cli_session` anew."""

    cli_session: str
    earlier: bytes | None = None


@dataclass(frozen=True)
class Limits:
    """What one run may spend; the service's defaults, narrowed by the repository's config."""

    timeout: int
    max_turns: int
    model: str | None = None
    max_budget_usd: float | None = None
    # The maintainers' extra instructions (.github/claude.yml `instructions`).
    append_system_prompt: str = ""


@dataclass(frozen=True)
class SandboxJob:
    """What one run of the CLI is given: the session's directories, how it reaches the model
    and its prompt, its limits.

    `model_env` is what the gateway service answered the session's opening with (`cli_env`):
    the backend's mode, pointed at RELAY_URL, and the session's key; never a credential.
    `extra_args` replace the permission bypass when given (a review is read-only); `setup` are
    the repository's setup commands, run by the image's entrypoint before the CLI.
    """

    session_id: str
    tree: Path
    control: Path
    model_env: dict[str, str]
    prompt: str
    limits: Limits
    extra_args: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    conversation: Conversation | None = None


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


def conversation_dir(control: Path) -> Path:
    """The session's directory mounted as the CLI's `projects/`, beside its control dir."""
    return Path(control).parent / "conversation"


def fresh_conversation_dir(control: Path) -> Path:
    """The conversation dir beside `control`, made empty: whenever a container is created on it
    (fresh or warm), a transcript is only ever the one seeded for this run, or the one this run
    writes."""
    path = conversation_dir(control)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # never follows a link inside
    elif os.path.lexists(path):
        path.unlink()
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        uid, gid = sandbox_user().split(":")
        os.lchown(path, int(uid), int(gid))
    return path


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

    def command(
        self, limits: Limits, extra: list[str], conversation: Conversation | None = None
    ) -> list[str]:
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
        if conversation is not None:
            # The worker names the session, so it knows which file to read out afterwards.
            flag = "--resume" if conversation.earlier is not None else "--session-id"
            cmd += [flag, conversation.cli_session]
        return cmd + extra

    def options(self, tree: Path, control: Path) -> dict:
        """Every option of a sandbox container but its image, command, environment and labels:
        the one place its restrictions and mounts are made, for fresh and warm containers."""
        s = self.settings
        uid, gid = sandbox_user().split(":")
        owned = f"uid={uid},gid={gid}"
        conversation = conversation_dir(control)
        return dict(
            user=f"{uid}:{gid}",
            working_dir=WORKSPACE,
            runtime=s.sandbox_runtime,
            # No network: the container gets a loopback of its own and nothing else (no route,
            # no other interface); its own namespaces for IPC and cgroups too.
            network_mode="none",
            ipc_mode="private",
            cgroupns="private",
            # The image is read-only; the CLI writes to /tmp and its config dir (tmpfs, sized),
            # the agent to the work tree, the CLI its transcript to the conversation dir (both
            # sized by the watch). The control dir is read-only: a Unix socket can be
            # connected to on a read-only mount.
            read_only=True,
            tmpfs={
                "/tmp": f"rw,exec,nosuid,nodev,size={s.sandbox_tmp_size},{owned},mode=1777",
                CONFIG_DIR: f"rw,nosuid,nodev,size={s.sandbox_config_size},{owned},mode=0700",
            },
            volumes={
                str(tree): {"bind": WORKSPACE, "mode": "rw"},
                str(control): {"bind": CONTROL_DIR, "mode": "ro"},
                str(conversation): {"bind": PROJECTS_DIR, "mode": "rw"},
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

    def options_digest(self, image_id: str) -> str:
        """What a warm container must have been created with to serve a session now: the image
        and every option but the mounts' host directories (each slot has its own)."""
        options = self.options(Path("tree"), Path("control"))
        return hashlib.sha256(
            json.dumps([image_id, options], sort_keys=True, default=repr).encode()
        ).hexdigest()[:32]

    def create(
        self,
        session_id: str,
        tree: Path,
        control: Path,
        command: list[str],
        environment: dict[str, str] | None = None,
    ):
        """The session's container, created (not started) with every restriction in place."""
        labels = {LABEL: session_id, ROLE_LABEL: "sandbox", HOST_LABEL: self.host()}
        fresh_conversation_dir(control)
        return self.client.containers.create(
            self.settings.agent_image,
            command=command,
            environment=environment or {},
            labels=labels,
            **self.options(tree, control),
        )

    def host(self) -> str:
        """This worker host's id, for the label that tells its reaper the container is its own."""
        try:
            return worker_host(self.settings, self.client)
        except HostUnknown as exc:
            raise SandboxError(str(exc)) from None

    def cli_version(self) -> str:
        """The CLI version of the agent image (its label), "" when it carries none."""
        try:
            labels = self.client.images.get(self.settings.agent_image).labels or {}
        except DockerException:
            return ""
        return str(labels.get(VERSION_LABEL, ""))

    @property
    def workspace_limit(self) -> int:
        return int(parse_bytes(self.settings.sandbox_workspace_size))

    def run(
        self,
        job: SandboxJob,
        on_action: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> SandboxRun:
        """Run `job` to its end; `on_action` hears each step the agent takes, `on_event` each
        event of the CLI's stream-json, `should_stop` is asked every check interval whether
        `/claude stop` was said."""
        asked = time.monotonic()
        self._write_control(job)
        image_id = self._check_ready(job.tree)
        command = self.command(job.limits, list(job.extra_args), job.conversation)
        environment = self._environment(job.model_env)
        launch = self._warm(job, image_id, command, environment)
        if launch is None:
            try:
                container = self.create(job.session_id, job.tree, job.control, command, environment)
            except DockerException as exc:
                raise SandboxError(f"the sandbox container could not be created ({exc})") from None
            launch = _Start(container)
        try:
            if job.conversation is not None and job.conversation.earlier is not None:
                seed(
                    conversation_dir(job.control),
                    job.conversation.cli_session,
                    job.conversation.earlier,
                )
            transcript = Transcript(on_action, on_event)
            watch = _Watch(self, launch, job.tree, transcript, should_stop, asked)
            watch.conversation = conversation_dir(job.control)
            run = watch.run(job.limits.timeout)
        finally:
            try:
                launch.container.remove(force=True)
            except DockerException as exc:
                log.warning("sandbox %s: removal failed (%s)", job.session_id, exc)
        if job.conversation is not None:
            # Read once the container is gone: nothing can change the file while it is read.
            try:
                run.transcript = read_out(
                    conversation_dir(job.control),
                    job.conversation.cli_session,
                    self.transcript_limit,
                )
            except ConversationError as exc:
                run.transcript_problem = str(exc)
        return run

    @property
    def transcript_limit(self) -> int:
        return int(parse_bytes(self.settings.transcript_max_size))

    def _warm(
        self, job: SandboxJob, image_id: str, command: list[str], environment: dict[str, str]
    ) -> _Exec | None:
        """The warm container of the session's pool slot, when its workspace is one and the
        container still fits; None (logged) for a fresh one."""
        try:
            container_id = (job.tree.parent / SLOT_FILE).read_text().strip()
        except OSError:
            return None  # not a pool slot
        try:
            container = self.client.containers.get(container_id)
            unfit = self._unfit(container, job, image_id)
        except DockerException as exc:
            container, unfit = None, f"it is gone ({type(exc).__name__})"
        if unfit:
            log.warning("sandbox %s: warm container not used: %s", job.session_id, unfit)
            if container is not None:
                with contextlib.suppress(DockerException):
                    container.remove(force=True)
            return None
        entrypoint = container.attrs["Config"].get("Entrypoint") or []
        return _Exec(self.client, container, [*entrypoint, *command], environment)

    def _unfit(self, container, job: SandboxJob, image_id: str) -> str:
        """Why `container` must not run `job` ('' when it may)."""
        labels = container.labels or {}
        if labels.get(ROLE_LABEL) != POOL_ROLE:
            return "it is not a pool container"
        if container.status != "running":
            return f"it is {container.status}"
        if labels.get(OPTIONS_LABEL) != self.options_digest(image_id):
            return "it was made from another image or other settings"
        mounts = {m["Destination"]: m["Source"] for m in container.attrs.get("Mounts", [])}
        wanted = {
            WORKSPACE: str(job.tree),
            CONTROL_DIR: str(job.control),
            PROJECTS_DIR: str(conversation_dir(job.control)),
        }
        if {k: mounts.get(k) for k in wanted} != wanted:
            return "its mounts are not this session's directories"
        return ""

    def _write_control(self, job: SandboxJob) -> None:
        (job.control / "prompt.md").write_text(job.prompt)
        os.chmod(job.control / "prompt.md", 0o644)
        if job.setup:
            # Run by the image's entrypoint inside the sandbox, never by the worker.
            (job.control / "setup.sh").write_text("\n".join(job.setup) + "\n")
            os.chmod(job.control / "setup.sh", 0o644)

    def check_image(self) -> str:
        """The agent image's id; SandboxError naming what to do when the engine or the image
        is not there."""
        try:
            return self.client.images.get(self.settings.agent_image).id
        except ImageNotFound:
            raise SandboxError(
                f"the agent image {self.settings.agent_image} is not built"
                " (run `bash scripts/build-images.sh`)"
            ) from None
        except DockerException as exc:
            raise SandboxError(f"the Docker engine is not reachable ({exc})") from None

    def _check_ready(self, tree: Path) -> str:
        image_id = self.check_image()
        if self._workspace_over(tree):
            raise SandboxError(
                "the checkout alone is larger than the workspace may grow "
                f"({self.settings.sandbox_workspace_size}, SANDBOX_WORKSPACE_SIZE)"
            )
        return image_id

    def _environment(self, model_env: dict[str, str]) -> dict[str, str]:
        return {
            **model_env,
            "CLAUDECLUSTER_RELAY_PORT": str(RELAY_PORT),
            "CLAUDE_CODE_MAX_RETRIES": str(self.settings.model_retries),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }

    def _memory_reason(self) -> str:
        return f"the sandbox ran out of memory (its limit is {self.settings.sandbox_memory})"

    def _workspace_over(self, tree: Path, conversation: Path | None = None) -> str:
        used = tree_usage(tree) + (tree_usage(conversation) if conversation else 0)
        if used <= self.workspace_limit:
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


class _Start:
    """A fresh container: its own main process is the run, attached before the start so that
    not a byte is missed (no log driver keeps it)."""

    warm = False

    def __init__(self, container) -> None:
        self.container = container

    def start(self):
        output = self.container.attach(
            stdout=True, stderr=True, stream=True, logs=False, demux=True
        )
        self.container.start()
        return output

    def ended(self, event: dict) -> bool:
        return False  # the stream ends with the container

    def status(self) -> dict:
        return self.container.wait(timeout=60)


class _Exec:
    """A warm container: the run is the image's entrypoint and the CLI exec'd in it, with the
    session's environment, as the sandbox user, in the work tree."""

    warm = True

    def __init__(self, client, container, command: list[str], environment: dict[str, str]) -> None:
        self.api = client.api
        self.container = container
        self.command = command
        self.environment = environment
        self.exec_id = ""

    def start(self):
        self.exec_id = self.api.exec_create(
            self.container.id,
            self.command,
            stdout=True,
            stderr=True,
            environment=self.environment,
            user=sandbox_user(),
            workdir=WORKSPACE,
        )["Id"]
        return self.api.exec_start(self.exec_id, stream=True, demux=True)

    def ended(self, event: dict) -> bool:
        # The relay the entrypoint started keeps the stream open after the CLI exits (the
        # engine then waits two seconds for it); the run is over when the exec'd process is.
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        return event.get("Action") == "exec_die" and attributes.get("execID") == self.exec_id

    def running(self) -> bool:
        if not self.exec_id:
            return True
        try:
            return bool(self.api.exec_inspect(self.exec_id).get("Running"))
        except DockerException:
            return False

    def status(self) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                found = self.api.exec_inspect(self.exec_id)
            except DockerException:
                return {}
            if not found.get("Running"):
                return {"StatusCode": found.get("ExitCode")}
            time.sleep(0.05)
        return {}


class _Watch:
    """One created container watched from its start to its end.

    The run ends at the deadline, on `/claude stop`, on the first limit reached (memory, the
    work tree's size, processes, output) or when the CLI exits. The engine enforces neither the
    work tree's size nor the process count as a limit that ends the run, so they are checked
    here; the first limit reached is the run's failure reason.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        launch: _Start | _Exec,
        tree: Path,
        transcript: Transcript,
        should_stop: Callable[[], bool] | None,
        asked: float,
    ) -> None:
        self.sandbox = sandbox
        self.launch = launch
        self.container = launch.container
        self.asked = asked
        self.ready_seconds = 0.0
        self.tree = tree
        self.should_stop = should_stop
        self.transcript = transcript
        self.timed_out = threading.Event()
        self.stopped = threading.Event()
        self.finished = threading.Event()
        self.limit = ""  # the first limit reached
        self.conversation: Path | None = None  # counted with the tree
        self._limit_lock = threading.Lock()
        self.stderr_tail = b""

    def run(self, timeout: int) -> SandboxRun:
        events = self._events()
        timer = threading.Timer(timeout, self._stop_at_deadline)
        try:
            if events is not None:
                threading.Thread(target=self._watch_events, args=(events,), daemon=True).start()
            output = self._start()
            threading.Thread(target=self._monitor, daemon=True).start()
            timer.start()
            self._read(output)
            status = self.launch.status()
        finally:
            timer.cancel()
            self.finished.set()
            if events is not None:
                with contextlib.suppress(Exception):
                    events.close()
        self._check_after_exit()
        return self._result(status)

    def limit_reached(self, reason: str, end: bool = True) -> None:
        with self._limit_lock:
            if self.limit:
                return
            self.limit = reason
        log.warning("sandbox %s: %s", self.container.short_id, reason)
        if end:
            self._kill()

    def _kill(self) -> None:
        with contextlib.suppress(DockerException):  # already gone
            self.container.kill()

    def _stop_at_deadline(self) -> None:
        self.timed_out.set()
        self._kill()

    def _events(self):
        try:
            return self.sandbox.client.events(
                decode=True,
                filters={"container": self.container.id, "event": ["oom", "exec_die"]},
            )
        except DockerException as exc:
            log.warning("sandbox: no OOM events (%s); relying on the container's state", exc)
            return None

    def _watch_events(self, events) -> None:
        with contextlib.suppress(Exception):  # the stream is closed when the run ends
            for event in events:
                # The kernel kills the biggest process of the container; the run ends with it,
                # or the agent would go on in a sandbox that has just run out of memory.
                if event.get("status") == "oom" or event.get("Action") == "oom":
                    self.limit_reached(self.sandbox._memory_reason())
                    return
                if self.launch.ended(event):
                    self._kill()  # used once: what the CLI left running goes with it

    def _start(self):
        try:
            output = self.launch.start()
        except DockerException as exc:
            raise SandboxError(f"the sandbox container did not start ({exc})") from None
        self.ready_seconds = time.monotonic() - self.asked
        log.info(
            "sandbox %s: %s container ready in %.3f s",
            self.container.short_id,
            "warm" if self.launch.warm else "fresh",
            self.ready_seconds,
        )
        return output

    def _monitor(self) -> None:
        # `/claude stop` sets a flag in Redis; killing the container ends the log stream.
        ticks = 0
        next_scan = 0.0
        while not self.finished.wait(self.sandbox.settings.sandbox_check_interval):
            ticks += 1
            if self._stop_asked():
                self.stopped.set()
                self._kill()
                return
            if isinstance(self.launch, _Exec) and not self.launch.running():
                self._kill()  # the CLI is done: in case its exit event was missed
                return
            if time.monotonic() >= next_scan:
                # A big tree takes a while to walk: walk it at most a fifth of the time.
                started = time.monotonic()
                if reason := self.sandbox._workspace_over(self.tree, self.conversation):
                    self.limit_reached(reason)
                    return
                next_scan = started + 5 * (time.monotonic() - started)
            if ticks % 2 == 0 and (reason := self.sandbox._processes_at_limit(self.container)):
                self.limit_reached(reason)
                return

    def _stop_asked(self) -> bool:
        if self.should_stop is None:
            return False
        try:
            return bool(self.should_stop())
        except Exception as exc:  # Redis away for a moment: the limits still count
            log.warning("sandbox: stop check failed (%s)", type(exc).__name__)
            return False

    def _read(self, output) -> None:
        reader = OutputReader(self.transcript.feed)
        for out, err in output:
            if err:
                self.stderr_tail = (self.stderr_tail + err)[-STDERR_TAIL:]
            if out and not reader.feed(out):
                self.limit_reached(
                    f"the sandbox printed more than {MAX_OUTPUT >> 20} MiB of output", end=False
                )
                break
        # Closed before the kill: the engine would otherwise wait, with the container, on a
        # reader that no longer reads.
        with contextlib.suppress(Exception):
            output.close()
        if self.limit:
            self._kill()
        reader.close()
        if reader.skipped:
            log.warning(
                "sandbox %s: %d output lines over %d bytes were skipped",
                self.container.short_id,
                reader.skipped,
                MAX_LINE,
            )

    def _check_after_exit(self) -> None:
        # The OOM event can lose the race with the exit; the container's state cannot.
        with contextlib.suppress(DockerException):
            self.container.reload()
            if self.container.attrs.get("State", {}).get("OOMKilled"):
                self.limit_reached(self.sandbox._memory_reason(), end=False)
        # Grown since the last check?
        if reason := self.sandbox._workspace_over(self.tree, self.conversation):
            self.limit_reached(reason, end=False)

    def _result(self, status: dict) -> SandboxRun:
        stderr = "\n".join(self.stderr_tail.decode("utf-8", "replace").splitlines()[-20:])
        outcome = self.transcript.outcome
        if self.limit:
            outcome.is_error = True
            outcome.errors = [self.limit]
            outcome.last_api_error = self.limit  # the failure reason when no result event came
        elif status.get("StatusCode") == SETUP_FAILED:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            outcome.setup_failed = " / ".join(lines[-4:])[-800:]
        return SandboxRun(
            outcome=outcome,
            exit_code=status.get("StatusCode"),
            timed_out=self.timed_out.is_set(),
            stderr_tail=stderr.strip()[-2000:],
            stopped=self.stopped.is_set(),
            ready_seconds=self.ready_seconds,
            warm=self.launch.warm,
            limit=self.limit,
        )
