"""A session's checkout: a trusted git directory for the worker, a work tree for the sandbox.

The sandbox only ever sees `tree/`; the repository's `.git` lives beside it in `git/` and is never
mounted, so the agent cannot plant hooks, config, filters or remotes for the worker to run.
Every git command the worker runs goes through jobs/sandbox/safegit.py: no system or global
config, no hooks or fsmonitor, and the installation token only through an in-memory credential
helper (in no file, no remote URL and no command line). With the repository cache on, the
objects come from the repository's mirror on this host (jobs/sandbox/mirror.py), copied into this
git directory: nothing is left pointing into the mirror.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jobs.sandbox.host import HOST_FILE
from jobs.sandbox.mirror import MirrorBusy, MirrorKey, RepoCache
from jobs.sandbox.safegit import LOCAL_TRANSPORTS, REMOTE_TRANSPORTS, GitError, SafeGit

log = logging.getLogger(__name__)

SANDBOX_UID = 1000
OWNER_FILE = "session-id"  # in each workspace root: the session it belongs to
_PARALLEL = {"checkout.workers": "0"}  # one checkout worker per core


@dataclass(frozen=True)
class CachedRepo:
    """Where a session's checkout may come from instead of GitHub: the repository's mirror."""

    cache: RepoCache
    key: MirrorKey


@dataclass(frozen=True)
class Owner:
    """Whose a workspace is: a session of a worker host (HOST_FILE), and where it goes: a warm
    sandbox's slot the session claimed (its owner files written by the pool), else a new
    directory."""

    session_id: str = "session"
    host: str = ""
    slot: Path | None = None


@dataclass(frozen=True)
class Change:
    sha: str
    files: list[str]  # "M\tpath" lines, as git prints them
    withheld: list[str] = field(default_factory=list)  # paths left out of the commit, and why


class Workspace:
    def __init__(
        self, root: Path, token: str, transports: tuple[str, ...] = REMOTE_TRANSPORTS
    ) -> None:
        self.root = root
        self.gitdir = root / "git"
        self.tree = root / "tree"
        # What the worker hands the sandbox besides the tree (gateway socket, prompt, the
        # review's diff): mounted read-only, so nothing in it can be a link the agent planted.
        self.control = root / "control"
        self._home = root / "home"
        self._home.mkdir()
        self._safe_git = SafeGit(self._home, token, transports)
        self.base_sha = ""

    @classmethod
    def clone(
        cls,
        parent: Path,
        url: str,
        ref: str,
        token: str,
        owner: Owner | None = None,
        cached: CachedRepo | None = None,
    ) -> Workspace:
        """Fetch `ref` (a branch name or a full ref such as `refs/pull/7/head`) and check it out,
        through the repository's mirror when `cached` names one; in the owner's `slot`, a warm
        sandbox's directory the session claimed (jobs/sandbox/pool.py), when it has one.

        The sandbox gets no history either way, only the tree. Straight from GitHub the git dir
        is shallow (a push needs only the new commits); through the cache it holds a copy of
        the mirror's objects, so later sessions fetch only what changed.
        """
        full_ref = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
        owner = owner or Owner()
        # A slot's claim wrote its owner files.
        root = owner.slot or cls._new_root(parent, owner)
        return cls._cloned(root, url, full_ref, token, REMOTE_TRANSPORTS, cached)

    @classmethod
    def clone_local(cls, parent: Path, repository: Path, commit: str, session_id: str) -> Workspace:
        """`commit` of a repository on this machine, for `claudecluster run`: read over git's
        file transport (and nothing else), with no token. The repository stays `origin`, so
        `free_branch` and `push` work on it as they do on GitHub."""
        root = cls._new_root(parent, Owner(session_id))
        return cls._cloned(root, str(repository), commit, "", LOCAL_TRANSPORTS)

    @staticmethod
    def _new_root(parent: Path, owner: Owner) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        # A short name keeps the gateway's Unix socket path under its 108-byte limit; the
        # owner files let a reaper tell whose leftovers it finds: which worker host's, then
        # which session's (the host first, so no workspace is ever named without it).
        root = Path(tempfile.mkdtemp(prefix="s-", dir=parent))
        if owner.host:
            (root / HOST_FILE).write_text(owner.host)
        (root / OWNER_FILE).write_text(owner.session_id)
        return root

    @classmethod
    def _cloned(
        cls,
        root: Path,
        url: str,
        ref: str,
        token: str,
        transports: tuple[str, ...],
        cached: CachedRepo | None = None,
    ) -> Workspace:
        """The checkout in `root`: a fresh directory, or a warm sandbox's slot whose empty tree
        and control dir are already mounted in its container."""
        ws = cls(root, token, transports)
        try:
            ws._git(
                "init", "--quiet", "--separate-git-dir", str(ws.gitdir), str(ws.tree), repo=False
            )
            # The gitfile would point the sandbox at a host path; the sandbox gets no git state.
            (ws.tree / ".git").unlink()
            ws._git("remote", "add", "origin", url)
            ws._check_out(url, ref, cached)
            ws.base_sha = ws._git("rev-parse", "HEAD").stdout.strip()
            ws.control.mkdir(mode=0o755, exist_ok=True)
            ws._hand_tree_to_sandbox()
        except BaseException:
            ws.remove()
            raise
        return ws

    def _check_out(self, url: str, ref: str, cached: CachedRepo | None) -> None:
        if cached is not None:
            try:
                self._check_out_from_mirror(url, ref, cached)
            except (MirrorBusy, OSError) as exc:
                log.warning("repository cache: %s; cloning %s from GitHub", exc, cached.key.name)
            else:
                cached.cache.evict(spare=cached.key)
                return
        self._git("fetch", "--quiet", "--no-tags", "--depth", "1", "origin", ref)
        self._git("checkout", "--quiet", "-B", "session", "FETCH_HEAD")

    def _check_out_from_mirror(self, url: str, ref: str, cached: CachedRepo) -> None:
        """`ref` from GitHub into the mirror, the mirror's objects copied into this git dir,
        and the checkout from that copy. A mirror whose objects cannot give the ref's tree
        (a truncated pack, a lost object) is rebuilt from GitHub once."""
        for rebuilt in (False, True):
            with cached.cache.mirror(cached.key, self._safe_git.token) as mirror:
                if rebuilt:
                    mirror.rebuild(url, ref)
                else:
                    mirror.refreshed(url, ref)  # GitHub's own refusals are raised from here
                try:
                    commit = mirror.copy_objects(ref, self.gitdir / "objects")
                except GitError:
                    commit = ""
                mirror.maintain()
            # Parallel checkout: writing a large tree is the warm path's cost.
            checkout = ("checkout", "--quiet", "--force", "-B", "session", commit)
            if commit and self._git(*checkout, check=False, config=_PARALLEL).returncode == 0:
                return
            if rebuilt:
                raise GitError(f"the repository cache cannot check out {ref}, even rebuilt")
            log.warning("repository cache: %s cannot check out %s", cached.key.name, ref)
            for stale in (self.gitdir / "objects").glob("[0-9a-f]*"):
                shutil.rmtree(stale)
            shutil.rmtree(self.gitdir / "objects" / "pack")

    def write_control(self, name: str, text: str) -> Path:
        """Write `name` (a relative path) under the control dir for the sandbox to read.

        Never into the tree: a pull request can commit a symlink under any name, and a write
        through it would land wherever it points, as the worker's user. Each step is opened
        without following links, and an existing entry is an error, not overwritten.
        """
        path = self.control / name
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(path, 0o644, follow_symlinks=False)
        return path

    def _hand_tree_to_sandbox(self) -> None:
        if os.geteuid() != 0:
            return  # a non-root worker runs the sandbox under its own uid instead
        for dirpath, dirnames, filenames in os.walk(self.tree):
            for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
                os.lchown(name, SANDBOX_UID, SANDBOX_UID)

    def commit(
        self, message: str, author: str, email: str, withhold: tuple[str, ...] = ()
    ) -> Change | None:
        """Stage everything the agent left and commit it; None when nothing changed.

        Paths under a `withhold` prefix (e.g. `.github/workflows/`, which would run with the
        repository's secrets) stay out of the commit and are reported instead.
        """
        self._drop_planted_git_dirs()
        self._git("add", "--all", "--", ".")
        withheld = []
        for prefix in withhold:
            staged = self._git("diff", "--cached", "--name-only", "--", prefix).stdout.split()
            if staged:
                self._git("reset", "--quiet", "HEAD", "--", prefix)
                withheld += staged
        if self._git("diff", "--cached", "--quiet", check=False).returncode == 0:
            return Change("", [], withheld) if withheld else None
        files = self._git("diff", "--cached", "--name-status", "--no-renames").stdout.splitlines()
        identity = {
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": email,
        }
        self._git("commit", "--quiet", "--no-verify", "--file", "-", input=message, env=identity)
        sha = self._git("rev-parse", "HEAD").stdout.strip()
        return Change(sha, files, withheld)

    def change_diff(self) -> str:
        """The session's commit over the checkout, without context lines (for suggestions)."""
        return self._git(
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            "-U0",
            self.base_sha,
            "HEAD",
        ).stdout

    def file_lines(self, rev: str, path: str) -> list[str] | None:
        """`path`'s lines at `rev` (a blob read as stored: no filters), None if absent."""
        found = self._git("cat-file", "blob", f"{rev}:{path}", check=False)
        return found.stdout.splitlines() if found.returncode == 0 else None

    def patch(self, paths: list[str]) -> str:
        """The session's commit limited to `paths`, as `git format-patch` writes it."""
        return self._git(
            "format-patch", "-1", "--stdout", "--no-color", "--no-ext-diff", "HEAD", "--", *paths
        ).stdout

    def free_branch(self, wanted: str) -> str:
        """`wanted`, or `wanted-2`, `wanted-3`… when an earlier session already used the name."""
        listing = self._git("ls-remote", "--heads", "origin", f"{wanted}*").stdout
        taken = {line.split("refs/heads/", 1)[1] for line in listing.splitlines() if line}
        candidate, n = wanted, 1
        while candidate in taken:
            n += 1
            candidate = f"{wanted}-{n}"
        return candidate

    def push(self, branch: str, protected: tuple[str, ...] = ()) -> None:
        """Push the session's commit to `branch`, which must not be one of `protected`."""
        if branch in protected:
            raise GitError(f"refusing to push to the protected branch {branch}")
        # Never forced: a branch that moved under us is an error to report, not to overwrite.
        self._git("push", "--quiet", "--no-verify", "origin", f"HEAD:refs/heads/{branch}")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _drop_planted_git_dirs(self) -> None:
        # A `.git` the agent created (dir, file or link) would make `git add` read a repository
        # of the agent's choosing, possibly outside the tree: remove them, never follow them.
        for dirpath, dirnames, filenames in os.walk(self.tree):
            for name in [*dirnames, *filenames]:
                if name == ".git":
                    path = os.path.join(dirpath, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
            dirnames[:] = [d for d in dirnames if d != ".git"]

    def _git(
        self,
        *args: str,
        repo: bool = True,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        config: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        where = ("--git-dir", str(self.gitdir), "--work-tree", str(self.tree)) if repo else ()
        return self._safe_git.run(
            *args, where=where, check=check, input=input, env=env, config=config
        )
