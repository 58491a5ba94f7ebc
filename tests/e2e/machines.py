"""Machines for the tests that kill them: a dockerd of a test's own, and a worker's processes.

A private engine has its own socket, data root, exec root (and so its own containerd), pid file
and network namespace, and no bridge or iptables rules: stopping it cannot touch the machine's
engine or anybody else's containers; it stands for another worker host's engine as well.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker

from tests.support import wait_for


class PrivateEngine:
    """A dockerd of this test's own (own socket, data root, containerd; no network setup), so
    restarting it cannot touch the machine's engine or anybody else's containers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        (root / "daemon.json").write_text("{}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # Its own network namespace: a second dockerd on the host's would remove the shared
            # engine's docker0 bridge, which later tests (and users' other containers) rely on.
            [
                "unshare",
                "--net",
                "dockerd",
                "--host",
                self.url,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--config-file",
                str(self.root / "daemon.json"),
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=(self.root / "dockerd.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._up, 60, what="the private dockerd")

    def _up(self) -> bool:
        try:
            return docker.DockerClient(base_url=self.url).ping()
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # dockerd stops its containers, then exits
            self.proc.wait(60)

    @property
    def client(self):
        return docker.DockerClient(base_url=self.url, timeout=120)


@contextlib.contextmanager
def loaded_engine(image: str, prefix: str = "ccd-") -> Iterator[PrivateEngine]:
    """A started private engine with `image` loaded into it (about a minute), removed after."""
    engine = PrivateEngine(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")))  # short path
    engine.start()
    try:
        saved = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", engine.url, "load", "-q"],
            stdin=saved.stdout,
            check=True,
            capture_output=True,
            timeout=300,
        )
        saved.wait(60)
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(engine.root, ignore_errors=True)


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a live process."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[1]), int(rest[2])) if rest[0] not in "ZX" else None


def horse_of(worker_pid: int) -> int | None:
    """The work horse: the worker's child that leads a process group of its own."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[0] == worker_pid and stat[1] == int(entry.name):
                return int(entry.name)
    return None
