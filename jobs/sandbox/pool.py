"""Warm sandboxes: agent containers created and started before the sessions that will use them.

A fresh sandbox costs a container's create and start (about 0.3 s under runc, 0.5 s under
runsc); an exec in a running one about 0.07 s. So each host keeps `SANDBOX_POOL_SIZE` slots
ready. A slot is a directory `WORKSPACE_ROOT/p-<random>/` with an empty `tree/` and `control/`
and a container created on them with `Sandbox.options`, the very restrictions and mounts of a
fresh sandbox (mounts are fixed at creation, hence a directory per slot), whose main process only
waits. Until a session claims it, it holds no secret (an empty environment), no repository (an
empty tree) and no gateway (no socket in the control dir).

A session claims a slot as it makes its workspace (`claim`): creating the slot's owner file
`session-id` with O_EXCL is the claim, atomic between the work horses of a host. The container
is then renamed after the session, which names it for operators, the reaper and the engine's
events. The workspace is made in the slot's directories (jobs/sandbox/workspace.py) and
`Sandbox.run` execs the CLI in the warm container (jobs/sandbox/container.py). A slot serves one
session: its container goes when the run ends, its directory with the workspace.

`Pool.fill` (the worker's keeper thread, and each maintenance tick) tops the pool up under a
host-wide lock: it takes away slots that no longer fit (the image rebuilt, the settings or the
runtime changed, the container stopped), containers whose directory is gone and directories left
without a container, then creates slots until `SANDBOX_POOL_SIZE` are idle. Idle slots a crashed
worker left are as good as new (nothing ran in them) and are reused while they fit. The reaper
(jobs/upkeep/reaper.py) leaves idle slots alone and counts a claimed one as its session's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from docker.errors import DockerException, NotFound

from jobs.common.settings import WorkerSettings
from jobs.sandbox.container import (
    OPTIONS_LABEL,
    POOL_ROLE,
    ROLE_LABEL,
    SLOT_FILE,
    Sandbox,
    SandboxError,
    conversation_dir,
    fresh_conversation_dir,
)
from jobs.sandbox.host import HOST_FILE, HOST_LABEL
from jobs.sandbox.workspace import OWNER_FILE, SANDBOX_UID

log = logging.getLogger(__name__)

POOL_LABEL = "claudecluster.pool"  # which host and WORKSPACE_ROOT a slot belongs to
SLOT_LABEL = "claudecluster.slot"  # the slot's directory name
SLOT_PREFIX = "p-"
CLAIMED_PREFIX = "claudecluster-"  # a claimed slot's container is named after its session
FILL_LOCK = "pool.lock"
# Waits without a wake-up; not `sleep`, which the security tests look for as another
# session's process.
IDLE_COMMAND = ["tail", "-f", "/dev/null"]


def pool_key(host: str, root: Path) -> str:
    """Worker host `host`'s pool for the workspaces under `root`: the processes of one host
    share it (a claim is atomic between them), several hosts may share an engine or a root."""
    where = f"{host}\0{root.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def claimed_name(session_id: str) -> str:
    return f"{CLAIMED_PREFIX}{session_id}"


class Pool:
    def __init__(self, settings: WorkerSettings, client=None) -> None:
        self.settings = settings
        self.sandbox = Sandbox(settings, client)
        self.root = settings.workspace_root

    @cached_property
    def host(self) -> str:
        # Asked when first needed: a keeper made while the engine is away must not fail.
        return self.sandbox.host()

    @cached_property
    def key(self) -> str:
        return pool_key(self.host, self.root)

    @property
    def client(self):
        return self.sandbox.client

    @property
    def size(self) -> int:
        return self.settings.sandbox_pool_size

    # -- a session's side ---------------------------------------------------------------

    def claim(self, session_id: str) -> Path | None:
        """An idle slot's directory, now the session's (its owner file written), or None."""
        try:
            candidates = sorted(self.root.glob(f"{SLOT_PREFIX}*"))
        except OSError:
            candidates = []
        for root in candidates:
            if not (root / SLOT_FILE).is_file() or not _take(root, session_id):
                continue  # not started yet, or another session's
            try:
                container_id = (root / SLOT_FILE).read_text().strip()
                dirs = (root / "tree", root / "control", conversation_dir(root / "control"))
                if any(any(path.iterdir()) for path in dirs):
                    raise SandboxError("its directories are not empty")
                self.client.api.rename(container_id, claimed_name(session_id))
            except (OSError, DockerException, SandboxError) as exc:
                log.warning("sandbox pool: slot %s is broken (%s); removed", root.name, exc)
                self._remove(root, None)
                continue
            log.info("sandbox pool: %s claimed slot %s", session_id, root.name)
            return root
        log.info("sandbox pool: no idle slot for %s; its sandbox starts cold", session_id)
        return None

    # -- the keeper's side --------------------------------------------------------------

    def containers(self) -> list:
        return self.client.containers.list(all=True, filters={"label": f"{POOL_LABEL}={self.key}"})

    def fill(self, size: int | None = None) -> int:
        """Top the pool up to `size` (default: SANDBOX_POOL_SIZE), draining what no longer fits;
        how many slots it made. Another process of this host filling meanwhile: nothing done."""
        size = self.size if size is None else size
        with _held(self.root / FILL_LOCK, wait=not size) as held:
            if not held:
                return 0
            image_id = self.sandbox.check_image() if size else ""
            digest = self.sandbox.options_digest(image_id) if size else ""
            idle = self._tidy(digest, size)
            made = 0
            while idle + made < size:
                self._create(image_id, digest)
                made += 1
            return made

    def drain(self) -> None:
        """Remove every idle slot (a worker shutting down); claimed ones stay their sessions'."""
        self.fill(size=0)

    def _tidy(self, digest: str, size: int) -> int:
        """Take away what is not a fitting idle slot or a claimed one; the idle slots kept."""
        kept, seen = 0, set()
        for container in self.containers():
            root = self._slot_dir(container)
            seen.add(root.name if root else "")
            if root is None or not (root / "tree").is_dir():
                why = "its directory is gone"
                root = None
            elif (root / OWNER_FILE).exists():
                continue  # claimed: its session's (or the reaper's)
            elif container.status != "running":
                why = f"it is {container.status}"
            elif (container.labels or {}).get(OPTIONS_LABEL) != digest:
                why = "the image or the sandbox settings changed"
            elif kept >= size:
                why = "the pool is smaller now"
            else:
                kept += 1
                continue
            if root is not None and not _take(root, "drained"):
                continue  # a session claimed it meanwhile
            log.info("sandbox pool: slot of %s removed: %s", container.short_id, why)
            self._remove(root, container)
        for root in self._dirs():
            if root.name not in seen and not (root / OWNER_FILE).exists() and _take(root, "gone"):
                log.info("sandbox pool: slot %s had no container; removed", root.name)
                self._remove(root, None)
        return kept

    def _slot_dir(self, container) -> Path | None:
        name = (container.labels or {}).get(SLOT_LABEL, "")
        if not name.startswith(SLOT_PREFIX) or "/" in name or name in (".", ".."):
            return None
        return self.root / name

    def _dirs(self) -> list[Path]:
        try:
            return [p for p in self.root.glob(f"{SLOT_PREFIX}*") if p.is_dir()]
        except OSError:
            return []

    def _create(self, image_id: str, digest: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=SLOT_PREFIX, dir=self.root))
        tree, control = root / "tree", root / "control"
        container = None
        try:
            # The host first, as in a session's workspace: a reaper of another host sharing
            # this root leaves the slot alone.
            (root / HOST_FILE).write_text(self.host)
            tree.mkdir()
            control.mkdir(mode=0o755)
            fresh_conversation_dir(control)
            if os.geteuid() == 0:
                os.chown(tree, SANDBOX_UID, SANDBOX_UID)
            container = self.client.containers.create(
                image_id,
                command=IDLE_COMMAND,
                environment={},
                labels={
                    ROLE_LABEL: POOL_ROLE,
                    HOST_LABEL: self.host,
                    POOL_LABEL: self.key,
                    SLOT_LABEL: root.name,
                    OPTIONS_LABEL: digest,
                },
                **self.sandbox.options(tree, control),
            )
            container.start()
            # Last: a session claims only a slot whose container is running.
            (root / SLOT_FILE).write_text(container.id)
        except BaseException:
            self._remove(root, container)
            raise

    def _remove(self, root: Path | None, container) -> None:
        if container is None and root is not None:
            with contextlib.suppress(OSError):
                container_id = (root / SLOT_FILE).read_text().strip()
                container = self.client.containers.get(container_id)
        if container is not None:
            with contextlib.suppress(NotFound, DockerException):
                container.remove(force=True)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def idle_memory(self) -> list[int]:
        """Each idle slot's memory use in bytes, as the engine counts it."""
        used = []
        for container in self.containers():
            root = self._slot_dir(container)
            if root and container.status == "running" and not (root / OWNER_FILE).exists():
                stats = self.client.api.stats(container.id, stream=False, one_shot=True)
                used.append(int((stats.get("memory_stats") or {}).get("usage") or 0))
        return used


def claimed_containers(client, host: str, root: Path) -> dict[str, list]:
    """Worker host `host`'s containers of claimed slots under `root`, by the session named in
    the container's name (idle slots are the pool's, never a session's leftovers)."""
    found: dict[str, list] = {}
    key = pool_key(host, root)
    listed = client.containers.list(all=True, filters={"label": f"{POOL_LABEL}={key}"})
    for container in listed:
        name = container.name or ""
        if name.startswith(CLAIMED_PREFIX):
            found.setdefault(name.removeprefix(CLAIMED_PREFIX), []).append(container)
    return found


def claim(settings: WorkerSettings, session_id: str) -> Path | None:
    """An idle slot for the session when the pool is on; None (and the session starts its
    sandbox cold) when it is off, empty or the engine is away."""
    if not settings.sandbox_pool_size:
        return None
    try:
        return Pool(settings).claim(session_id)
    except (SandboxError, DockerException, OSError) as exc:
        log.warning("sandbox pool: not used (%s); the sandbox starts cold", exc)
        return None


class PoolKeeper:
    """Keeps this host's pool filled from a thread of the worker process, every `interval`."""

    def __init__(self, settings: WorkerSettings, interval: float = 1.0) -> None:
        self.pool = Pool(settings)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-pool", daemon=True)
        self._trouble = ""

    def start(self) -> PoolKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refilling and drain the idle slots: nothing waits on this host for no worker."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            self.pool.drain()
        except Exception as exc:  # the engine away: the next worker here reuses or drains them
            log.warning("sandbox pool: not drained (%s: %s)", type(exc).__name__, exc)

    def tick(self) -> None:
        try:
            made = self.pool.fill()
        except Exception as exc:  # the engine away, the image missing: said once, retried
            trouble = f"{type(exc).__name__}: {exc}"
            if trouble != self._trouble:
                log.warning("sandbox pool: not filled (%s); sandboxes start cold", trouble)
            self._trouble = trouble
            return
        if made:
            log.info("sandbox pool: %d slot(s) started", made)
        self._trouble = ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)


def _take(root: Path, owner: str) -> bool:
    """Make `owner` the slot's owner unless it has one: the atomic step of a claim."""
    try:
        fd = os.open(root / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(owner)
    return True


@contextlib.contextmanager
def _held(path: Path, wait: bool = False) -> Iterator[bool]:
    """An exclusive flock on `path`; unless `wait`, False at once when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            # Explicitly: a work horse forked meanwhile holds a copy of the descriptor.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
