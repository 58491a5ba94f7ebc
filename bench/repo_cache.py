#!/usr/bin/env python3
"""The repository cache against a full clone, on a large repository served over smart HTTP.

    .venv/bin/python -m bench.repo_cache             # 3 rounds of each, under WORKSPACE_ROOT's /tmp
    .venv/bin/python -m bench.repo_cache --rounds 5 --dir /dev/shm
    .venv/bin/python -m bench.repo_cache --dir /dev/shm --cache-dir /tmp \
        --history-from ~/src/git.git     # workspaces on tmpfs, mirrors on disk, git's history

The repository (bench/large_repo.py: 60,000 files of real projects' sources, 4,500 commits, and
with --history-from a real project's whole history merged in) is built once into .cache/bench and
served by the GitHub stand-in (tests/standins/github.py) through `git http-backend`, with an
installation token as GitHub would want it. Measured, in one run, on
the same stand-in, medians of `--rounds`:

* baseline: `git clone` of the repository (full history and a checkout), with plain git;
* `Workspace.clone` with the cache off: what every session did before the cache (shallow);
* the cache's first fill: `Workspace.clone` with an empty cache (a full fetch into the mirror);
* a warm session checkout: `Workspace.clone` with the mirror there, after a commit was pushed
  upstream since the last session (so each round fetches something new).

Prints each figure and the baseline's time over the warm checkout's (the target is >= 5), and
the same for the repository's objects alone (a full clone without checkout against the warm
path's refresh of the mirror and copy of its objects), since writing 60,000 files is a cost the
full clone and every session checkout share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.large_repo import build
from jobs.sandbox.mirror import MirrorKey, RepoCache
from jobs.sandbox.safegit import SafeGit
from jobs.sandbox.workspace import CachedRepo, Workspace
from tests.standins import github_git
from tests.standins.github import GitHubStandIn

SETTLE = 3.0  # seconds after a sync before each timed step
REPO = "bench-org/large"
INSTALLATION = 5


def serve(gh: GitHubStandIn, built: Path) -> None:
    """The built repository as the stand-in's REPO (a hard-linked copy: nothing is pushed)."""
    gh.add_installation(INSTALLATION, "bench-org")
    repo = gh.add_repo(REPO, INSTALLATION)
    shutil.rmtree(repo.path)
    env = github_git.git_env(repo.path.parent)
    subprocess.run(
        ["git", "clone", "--bare", "--quiet", str(built), str(repo.path)], check=True, env=env
    )
    github_git.configure_repo(repo.path, env)


FULL = "full clone (plain git, with checkout)"
SHALLOW = "session checkout, cache off (shallow fetch)"
FIRST = "session checkout, cache's first fill"
WARM = "warm session checkout (a new commit upstream)"
FULL_OBJECTS = "objects only: full clone --no-checkout"
WARM_OBJECTS = "objects only: mirror refresh + copy (new commit)"


@dataclass
class Run:
    gh: GitHubStandIn
    work: Path
    url: str
    token: str
    cached: CachedRepo
    figures: dict[str, list[float]] = field(default_factory=dict)

    def timed(self, name: str, action: Callable[[], object]) -> None:
        # Each step starts on a settled disk: the last step's 600 MB of removed files are
        # written back and discarded first, for every figure alike.
        os.sync()
        time.sleep(SETTLE)
        began = time.monotonic()
        action()
        self.figures.setdefault(name, []).append(time.monotonic() - began)

    def session(self, cached: CachedRepo | None) -> Workspace:
        return Workspace.clone(self.work / "s", self.url, "main", self.token, cached=cached)

    def round(self, n: int) -> None:
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        target = self.work / f"full-{n}"
        plain = SafeGit(home, self.token)
        self.timed(FULL, lambda: plain.run("clone", "-q", self.url, str(target)))
        shutil.rmtree(target)
        self.timed(SHALLOW, lambda: self.session(None).remove())
        shutil.rmtree(self.cached.cache.root, ignore_errors=True)
        self.timed(FIRST, lambda: self.session(self.cached).remove())
        self.gh.add_commit(REPO, "main", {f"bench/round-{n}.txt": f"round {n}\n"})
        made: list[Workspace] = []
        self.timed(WARM, lambda: made.append(self.session(self.cached)))
        if not (made[0].tree / "bench" / f"round-{n}.txt").is_file():
            raise SystemExit("the warm checkout misses the commit pushed since the last session")
        made[0].remove()
        self.timed(FULL_OBJECTS, lambda: plain.run("clone", "-q", "-n", self.url, str(target)))
        shutil.rmtree(target)
        self.gh.add_commit(REPO, "main", {f"bench/objects-{n}.txt": f"round {n}\n"})
        self.timed(WARM_OBJECTS, lambda: self.objects(target / "objects"))
        shutil.rmtree(target)

    def objects(self, into: Path) -> None:
        with self.cached.cache.mirror(self.cached.key, self.token) as mirror:
            mirror.refreshed(self.url, "refs/heads/main")
            mirror.copy_objects("refs/heads/main", into)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the clones go")
    parser.add_argument(
        "--cache-dir", type=Path, help="where the mirrors go (default: under --dir)"
    )
    parser.add_argument(
        "--history-from", type=Path, help="a local clone of a real project whose history to merge"
    )
    args = parser.parse_args()
    built = build(args.history_from)
    with (
        GitHubStandIn() as gh,
        tempfile.TemporaryDirectory(prefix="repo-cache-bench-", dir=args.dir) as tmp,
    ):
        serve(gh, built)
        repo_id = gh.repo(REPO).id
        files = gh.git(REPO, "ls-tree", "-r", "--name-only", "main").count("\n")
        commits = gh.git(REPO, "rev-list", "--count", "main").strip()
        print(f"{REPO}: {files} files, {commits} commits, over smart HTTP from the stand-in")
        cache_root = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.cache_dir or tmp))
        cache = RepoCache(cache_root / "cache", 50 * 2**30, 600)
        run = Run(
            gh,
            Path(tmp),
            f"{gh.url}/{REPO}.git",
            gh.mint_token(INSTALLATION, ["large"], {"contents": "write"}),
            CachedRepo(cache, MirrorKey(INSTALLATION, repo_id)),
        )
        try:
            for n in range(args.rounds):
                run.round(n)
        finally:
            shutil.rmtree(cache_root, ignore_errors=True)
    width = max(map(len, run.figures))
    print(f"{'':{width}}  median    min    max  (seconds, {args.rounds} rounds, in {args.dir})")
    for name, values in run.figures.items():
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"{name:{width}}  {mid:6.2f} {low:6.2f} {high:6.2f}")
    medians = {name: statistics.median(values) for name, values in run.figures.items()}
    ratio = medians[FULL] / medians[WARM]
    print(f"full clone / warm checkout: {ratio:.1f}x (target >= 5x)")
    print(f"cache-off session checkout / warm checkout: {medians[SHALLOW] / medians[WARM]:.1f}x")
    print(f"objects only, full clone / warm: {medians[FULL_OBJECTS] / medians[WARM_OBJECTS]:.1f}x")
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
