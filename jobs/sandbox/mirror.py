"""The repository cache: a bare mirror per repository and installation on the worker host.

A session's ref is fetched from GitHub into the mirror (only that ref), then the mirror's
objects are copied into the session's own git directory (jobs/sandbox/workspace.py) and checked
out from there: the checkout holds its own copy, with no alternates, worktree or link into the
cache, and the sandbox, which gets only the work tree, never sees the mirror.

* Keyed by installation id and repository id: two installations never share a mirror, so one
  installation's token never lends another what it could not fetch itself.
* Each mirror has a lock file beside it (`fcntl.flock`, exclusive). Everything that touches a
  mirror holds it: the fetch, the copy of its objects, the repack, the clearing of `*.lock` files a
  killed git left behind, eviction. A lock not had within the timeout raises `MirrorBusy`;
  the caller then clones straight from GitHub.
* Git's automatic gc and maintenance are off (they could run in the middle of another
  command); the mirror's small packs are merged, under the lock, once it has `GC_PACKS` packs.
* A mirror git cannot read (truncated pack, missing objects) is found by a failed fetch and
  `git fsck --connectivity-only`, and rebuilt from GitHub.
* The total stays under a bound: the least recently used mirrors (by their `.used` file's
  time) go first, never one whose lock someone holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobs.sandbox.safegit import GitError, SafeGit

log = logging.getLogger(__name__)

GC_PACKS = 20  # packs a mirror gathers (one per fetch that brought objects) before a repack
# Written into every mirror and passed on every command: nothing runs behind the lock's back.
MIRROR_CONFIG = {
    "gc.auto": "0",
    "gc.autoDetach": "false",
    "maintenance.auto": "false",
    "fetch.writeCommitGraph": "false",
    "core.logAllRefUpdates": "false",
    "repack.writeBitmaps": "true",
    "fetch.unpackLimit": "1",  # every fetch leaves a pack, never loose objects
}
_OBJECT_FILES = (".pack", ".rev", ".bitmap", ".idx")  # the order they are copied in
_POLL = 0.05  # seconds between two tries of a held lock


class MirrorBusy(RuntimeError):
    """The mirror's lock was not had within the timeout."""


@dataclass(frozen=True)
class MirrorKey:
    installation_id: int
    repository_id: int

    @property
    def name(self) -> str:
        return f"i{self.installation_id}-r{self.repository_id}"


@dataclass(frozen=True)
class RepoCache:
    root: Path
    max_bytes: int
    lock_timeout: float  # seconds

    def mirror_path(self, key: MirrorKey) -> Path:
        return self.root / f"{key.name}.git"

    @contextmanager
    def mirror(self, key: MirrorKey, token: str) -> Iterator[Mirror]:
        """The key's mirror (created empty if absent), held exclusively until the block ends;
        MirrorBusy when another holder keeps it past the timeout."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = self.root / ".home"
        home.mkdir(mode=0o700, exist_ok=True)
        with _held(self.root / f"{key.name}.lock", self.lock_timeout):
            (self.root / f"{key.name}.used").touch()
            mirror = Mirror(self.mirror_path(key), SafeGit(home, token))
            mirror.clear_stale_locks()
            mirror.ensure()
            yield mirror

    def evict(self, spare: MirrorKey | None = None) -> list[str]:
        """Remove least recently used mirrors until the total is under the bound; a mirror
        whose lock is held, and `spare`, stay. Returns the names removed."""
        spared = spare.name if spare else None
        mirrors = []
        for path in self.root.glob("*.git"):
            name = path.name.removesuffix(".git")
            mirrors.append((_mtime(self.root / f"{name}.used"), name, _size(path)))
        total = sum(size for _, _, size in mirrors)
        removed = []
        for _, name, size in sorted(mirrors):
            if total <= self.max_bytes:
                break
            if name == spared:
                continue
            try:
                with _held(self.root / f"{name}.lock", 0):
                    shutil.rmtree(self.root / f"{name}.git", ignore_errors=True)
                    (self.root / f"{name}.used").unlink(missing_ok=True)
            except MirrorBusy:
                continue  # in use: it is not the least recently used for long
            total -= size
            removed.append(name)
            log.info("repository cache: evicted %s (%d bytes)", name, size)
        return removed


@dataclass(frozen=True)
class Mirror:
    """A bare mirror; its methods run only while its lock is held (RepoCache.mirror)."""

    path: Path
    git: SafeGit

    def run(self, *args: str) -> str:
        return self._git(*args).stdout

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        where = ("--git-dir", str(self.path))
        return self.git.run(*args, where=where, check=check, config=MIRROR_CONFIG)

    def ensure(self) -> None:
        if not (self.path / "HEAD").is_file():
            self._create()

    def clear_stale_locks(self) -> None:
        # A git killed mid-command leaves `*.lock` files (refs, packed-refs, shallow, config)
        # and temporary packs; with the lock held, nobody else is using them.
        if not self.path.is_dir():
            return
        for dirpath, _, filenames in os.walk(self.path):
            for name in filenames:
                if name.endswith(".lock") or name.startswith(("tmp_pack_", "tmp_idx_")):
                    Path(dirpath, name).unlink(missing_ok=True)

    def refresh(self, url: str, ref: str) -> None:
        """Fetch `ref` (a full ref name) from `url` into the mirror under the same name."""
        self.run(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-maintenance",
            "--no-write-commit-graph",
            url,
            f"+{ref}:{ref}",
        )

    def refreshed(self, url: str, ref: str) -> None:
        """`refresh`, rebuilding the mirror first when the failure is the mirror's own."""
        try:
            self.refresh(url, ref)
        except GitError:
            if self.healthy():
                raise  # GitHub's answer (a missing ref, a refused token): not ours to fix
            self.rebuild(url, ref)

    def healthy(self) -> bool:
        fsck = ("fsck", "--connectivity-only", "--no-dangling", "--no-progress")
        return self._git(*fsck, check=False).returncode == 0

    def rebuild(self, url: str, ref: str) -> None:
        log.warning("repository cache: %s is unreadable, rebuilding it", self.path.name)
        self._create()
        self.refresh(url, ref)

    def copy_objects(self, ref: str, objects: Path) -> str:
        """Copy the mirror's objects into the git object directory `objects` (a copy, never a
        link: reflinked where the filesystem can, so the checkout shares nothing writable with
        the mirror); return the commit `ref` names."""
        commit = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        source = self.path / "objects"
        packs = sorted(
            (p for p in (source / "pack").iterdir() if p.suffix in _OBJECT_FILES),
            key=lambda p: _OBJECT_FILES.index(p.suffix),  # an .idx only once its pack is there
        )
        loose = [p for p in source.glob("[0-9a-f][0-9a-f]/*") if p.is_file()]
        (objects / "pack").mkdir(parents=True, exist_ok=True)
        _copy(packs, objects / "pack")
        for path in loose:
            (objects / path.parent.name).mkdir(exist_ok=True)
            _copy([path], objects / path.parent.name)
        return commit

    def maintain(self) -> None:
        """Once the fetches have gathered GC_PACKS packs, merge the small ones (a geometric
        repack: it never rewrites the big pack, so it stays cheap); the lock is held."""
        packs = list((self.path / "objects" / "pack").glob("*.pack"))
        if len(packs) >= GC_PACKS:
            try:
                self.run("repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index")
            except GitError as exc:  # the session has what it needs; the next one tries again
                log.warning("repository cache: repacking %s: %s", self.path.name, exc)

    def _create(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.git.run("init", "--bare", "--quiet", str(self.path))
        for key, value in MIRROR_CONFIG.items():
            self.run("config", key, value)


@contextmanager
def _held(lock_file: Path, timeout: float) -> Iterator[None]:
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise MirrorBusy(f"{lock_file.name} is held by another session") from None
                time.sleep(_POLL)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _copy(files: list[Path], directory: Path) -> None:
    if not files:
        return
    copy = ["cp", "--reflink=auto", "--no-preserve=all", "--", *map(str, files), str(directory)]
    done = subprocess.run(copy, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:  # a full disk, say: the caller clones from GitHub instead
        raise OSError(f"copying the mirror's objects failed: {done.stderr.strip()[-300:]}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # never used, or being evicted by another worker: first in line


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total
