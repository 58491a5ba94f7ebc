"""The repository cache (jobs/sandbox/mirror.py) on real git, against the GitHub stand-in's
smart HTTP: warm checkouts, isolation between installations, concurrency, stale locks,
corruption, eviction, the lock's timeout and the token."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs.common.settings import ConfigError, WorkerSettings
from jobs.sandbox.mirror import GC_PACKS, MIRROR_CONFIG, MirrorKey, RepoCache
from jobs.sandbox.workspace import CachedRepo, GitError, Workspace
from tests.standins.github import GitHubStandIn

INSTALLATION = 41
OTHER_INSTALLATION = 42
FILES = {"README.md": "# tools\n", "src/app.py": "x = 1\n", "docs/a/b/c.txt": "deep\n"}
TREE = {name: text.encode() for name, text in FILES.items()}


@pytest.fixture
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, "octo-org")
        gh.add_installation(OTHER_INSTALLATION, "other-org")
        for name in ("tools", "second", "third"):
            gh.add_repo(f"octo-org/{name}", INSTALLATION, files=dict(FILES))
        gh.add_repo("other-org/theirs", OTHER_INSTALLATION, files={"THEIRS": "x\n"})
        yield gh


@pytest.fixture
def token(github):
    return github.mint_token(INSTALLATION, ["tools", "second", "third"], {"contents": "write"})


@pytest.fixture
def cache(tmp_path):
    return RepoCache(tmp_path / "cache", 1 << 30, 30)


def cached(github, cache: RepoCache, name: str = "tools", installation: int = INSTALLATION):
    repo = github.repo(f"octo-org/{name}")
    return CachedRepo(cache, MirrorKey(installation, repo.id))


def url(github, name: str = "tools") -> str:
    return f"{github.url}/octo-org/{name}.git"


def tree_of(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `root`: size, mtime and a digest of its bytes."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, digest)
    return found


@contextmanager
def held(lock_file: Path) -> Iterator[None]:
    """The lock as another worker process holds it while it uses the mirror."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def git_in(path: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(path)}
    return subprocess.run(
        ["git", "--git-dir", str(path), *args], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_a_warm_checkout_is_the_fresh_clones_tree_and_leaves_the_mirror_untouched(
    github, token, cache, tmp_path
):
    entry = cached(github, cache)
    fresh = Workspace.clone(tmp_path / "fresh", url(github), "main", token)
    first = Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry)
    mirror = cache.mirror_path(entry.key)
    before = snapshot(mirror)
    warm = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry)
    assert (
        warm.base_sha
        == fresh.base_sha
        == first.base_sha
        == github.branches("octo-org/tools")["main"]
    )
    assert tree_of(warm.tree) == tree_of(fresh.tree) == TREE
    # The session works in its own git dir: nothing borrowed, nothing pointing at the mirror.
    assert not (warm.gitdir / "objects" / "info" / "alternates").exists()
    for path in warm.gitdir.rglob("*"):
        if path.is_file():
            assert str(mirror).encode() not in path.read_bytes(), path
            assert path.stat().st_nlink == 1, f"{path} is a hard link"
    (warm.tree / "src" / "app.py").write_text("x = 2\n")
    warm.commit("change", "bot", "bot@example.test")
    assert snapshot(mirror) == before, "a warm checkout and a commit in it wrote the mirror"
    for ws in (fresh, first, warm):
        ws.remove()


def test_a_commit_pushed_since_the_last_session_is_fetched(github, token, cache, tmp_path):
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry).remove()
    new = github.add_commit("octo-org/tools", "main", {"src/app.py": "x = 3\n", "NEW": "n\n"})
    ws = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry)
    assert ws.base_sha == new
    assert (ws.tree / "src" / "app.py").read_text() == "x = 3\n" and (ws.tree / "NEW").is_file()
    assert git_in(cache.mirror_path(entry.key), "rev-parse", "refs/heads/main").strip() == new


def test_a_pull_request_ref_is_mirrored_under_its_own_name(github, token, cache, tmp_path):
    entry = cached(github, cache)
    head = github.add_commit("octo-org/tools", "main", {"PR": "p\n"})
    github.git("octo-org/tools", "update-ref", "refs/pull/7/head", head)
    ws = Workspace.clone(tmp_path, url(github), "refs/pull/7/head", token, cached=entry)
    assert ws.base_sha == head and (ws.tree / "PR").read_text() == "p\n"


def test_two_installations_never_share_a_mirror(github, token, cache, tmp_path):
    # The same repository id under another installation: its token cannot read the repository,
    # so a cache keyed by repository alone would hand it what GitHub refuses.
    mine = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=mine).remove()
    theirs = CachedRepo(cache, MirrorKey(OTHER_INSTALLATION, mine.key.repository_id))
    their_token = github.mint_token(OTHER_INSTALLATION, ["theirs"], {"contents": "write"})
    with pytest.raises(GitError) as refused:
        Workspace.clone(tmp_path / "b", url(github), "main", their_token, cached=theirs)
    assert their_token not in str(refused.value) and token not in str(refused.value)
    assert cache.mirror_path(theirs.key) != cache.mirror_path(mine.key)
    assert not git_in(cache.mirror_path(theirs.key), "rev-list", "--all").strip()
    assert not list(tmp_path.joinpath("b").glob("s-*")), "the refused workspace was left behind"


def test_concurrent_sessions_on_one_repository_all_get_their_tree(github, token, cache, tmp_path):
    entry = cached(github, cache)
    shas = [github.branches("octo-org/tools")["main"]]
    pushing = threading.Lock()

    def session(n: int) -> tuple[str, dict[str, bytes], set[str]]:
        if n % 3 == 2:  # some sessions race a push: each must see at least the sha it knew of
            with pushing:
                shas.append(github.add_commit("octo-org/tools", "main", {f"f{n}": f"{n}\n"}))
        known = set(shas)
        ws = Workspace.clone(tmp_path / str(n), url(github), "main", token, cached=entry)
        try:
            return ws.base_sha, tree_of(ws.tree), known
        finally:
            ws.remove()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(session, range(12)))
    for base_sha, tree, known in results:
        expected = github.git("octo-org/tools", "ls-tree", "-r", "--name-only", base_sha).split()
        assert sorted(tree) == sorted(expected)
        assert tree["README.md"] == b"# tools\n"
        # Never older than what upstream had when the session started.
        assert shas.index(base_sha) >= max(shas.index(sha) for sha in known)
    git_in(cache.mirror_path(entry.key), "fsck", "--connectivity-only", "--no-dangling")


def test_stale_lock_files_left_by_a_killed_fetch_are_cleared(github, token, cache, tmp_path):
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry).remove()
    mirror = cache.mirror_path(entry.key)
    planted = [mirror / "refs" / "heads" / "main.lock", mirror / "packed-refs.lock"]
    for path in planted:
        path.write_text("left by a killed git fetch\n")
    (mirror / "objects" / "pack" / "tmp_pack_Zk3a").write_bytes(b"partial pack")
    new = github.add_commit("octo-org/tools", "main", {"AFTER": "a\n"})
    ws = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry)
    assert ws.base_sha == new and (ws.tree / "AFTER").is_file()
    assert not [path for path in planted if path.exists()]
    assert not list((mirror / "objects" / "pack").glob("tmp_pack_*"))


def test_a_lock_file_is_not_cleared_while_another_holds_the_mirror(github, token, cache, tmp_path):
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry).remove()
    mirror = cache.mirror_path(entry.key)
    in_use = mirror / "refs" / "heads" / "main.lock"
    busy = RepoCache(cache.root, cache.max_bytes, 0.3)
    with held(cache.root / f"{entry.key.name}.lock"):
        in_use.write_text("another worker's fetch, running\n")
        impatient = CachedRepo(busy, entry.key)
        ws = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=impatient)
        assert in_use.exists(), "a lock file was removed while its owner held the mirror"
        in_use.unlink()
    assert tree_of(ws.tree) == TREE


@pytest.mark.parametrize("damage", ["truncate", "delete", "scramble", "blob"])
def test_a_corrupt_mirror_is_rebuilt_and_the_session_gets_the_right_tree(
    github, token, cache, tmp_path, damage
):
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry).remove()
    mirror = cache.mirror_path(entry.key)
    blob = git_in(mirror, "rev-parse", "refs/heads/main:src/app.py").strip()
    for pack in (mirror / "objects" / "pack").glob("*.pack"):
        if damage == "blob":  # one file's bytes gone bad: fetch and fsck --connectivity-only
            _spoil(pack, blob)  # never read blobs, only the checkout finds it
        elif damage == "truncate":
            with pack.open("r+b") as handle:
                handle.truncate(pack.stat().st_size // 2)
        elif damage == "delete":
            pack.unlink()
        else:  # bytes gone bad inside: the pack still matches its index's checksum
            data = bytearray(pack.read_bytes())
            data[12:-20] = bytes(len(data) - 32)
            pack.chmod(0o644)
            pack.write_bytes(bytes(data))
    ws = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry)
    assert ws.base_sha == github.branches("octo-org/tools")["main"]
    assert tree_of(ws.tree) == TREE
    git_in(mirror, "fsck", "--connectivity-only", "--no-dangling")  # raises if still broken


def _spoil(pack: Path, sha: str) -> None:
    listing = git_in(pack.parent.parent.parent, "verify-pack", "-v", str(pack.with_suffix(".idx")))
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == sha:
            stored, offset = int(fields[3]), int(fields[4])
            data = bytearray(pack.read_bytes())
            data[offset + 2 : offset + stored] = bytes(stored - 2)
            pack.chmod(0o644)
            pack.write_bytes(bytes(data))
            return
    raise AssertionError(f"{sha} is not in {pack}")


def test_eviction_keeps_the_bound_and_spares_a_mirror_in_use(github, token, tmp_path):
    roomy = RepoCache(tmp_path / "cache", 1 << 30, 30)
    names = ("tools", "second", "third")
    for n, name in enumerate(names):
        entry = cached(github, roomy, name)
        Workspace.clone(tmp_path / name, url(github, name), "main", token, cached=entry).remove()
        os.utime(roomy.root / f"{entry.key.name}.used", (1000 + n, 1000 + n))  # oldest first
    keys = [cached(github, roomy, name).key for name in names]
    sizes = {key.name: _du(roomy.mirror_path(key)) for key in keys}
    bound = sizes[keys[2].name] + sizes[keys[0].name]  # room for two: the oldest must go...
    tight = RepoCache(roomy.root, bound, 30)
    with held(roomy.root / f"{keys[0].name}.lock"):  # ...but it is in use: the next one goes
        assert tight.evict() == [keys[1].name]
    assert roomy.mirror_path(keys[0]).is_dir() and roomy.mirror_path(keys[2]).is_dir()
    assert not roomy.mirror_path(keys[1]).exists()
    assert sum(_du(roomy.mirror_path(key)) for key in (keys[0], keys[2])) <= bound
    assert RepoCache(roomy.root, 1, 30).evict(spare=keys[2]) == [keys[0].name]
    assert roomy.mirror_path(keys[2]).is_dir(), "the session's own mirror was evicted"


def _du(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_session_evicts_old_mirrors_past_the_bound(github, token, tmp_path):
    cache = RepoCache(tmp_path / "cache", 1, 30)  # room for none but the one in use
    first = cached(github, cache, "second")
    Workspace.clone(tmp_path / "a", url(github, "second"), "main", token, cached=first).remove()
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry).remove()
    assert not cache.mirror_path(first.key).exists()
    assert cache.mirror_path(entry.key).is_dir()


def test_a_held_lock_past_the_timeout_falls_back_to_a_direct_clone(github, token, tmp_path, caplog):
    cache = RepoCache(tmp_path / "cache", 1 << 30, 0.5)
    entry = cached(github, cache)
    caplog.set_level(logging.WARNING, logger="jobs.sandbox.workspace")
    with held(cache.root / f"{entry.key.name}.lock"):
        ws = Workspace.clone(tmp_path, url(github), "main", token, cached=entry)
    assert tree_of(ws.tree) == TREE
    assert ws.base_sha == github.branches("octo-org/tools")["main"]
    assert not cache.mirror_path(entry.key).exists(), "the mirror was used without its lock"
    assert "held by another session" in caplog.text and "cloning" in caplog.text
    assert token not in caplog.text


def test_the_token_is_in_no_file_under_the_cache(github, token, cache, tmp_path):
    entry = cached(github, cache)
    for n in range(2):
        github.add_commit("octo-org/tools", "main", {f"n{n}": "x\n"})
        Workspace.clone(tmp_path / str(n), url(github), "main", token, cached=entry).remove()
    files = [path for path in cache.root.rglob("*") if path.is_file()]
    assert any(path.suffix == ".pack" for path in files)
    for path in files:
        data = path.read_bytes()
        assert token.encode() not in data and b"x-access-token" not in data, path


def test_the_mirror_runs_no_automatic_gc_or_maintenance_and_no_hooks(
    github, token, cache, tmp_path
):
    entry = cached(github, cache)
    Workspace.clone(tmp_path / "a", url(github), "main", token, cached=entry).remove()
    mirror = cache.mirror_path(entry.key)
    for key, value in MIRROR_CONFIG.items():
        assert git_in(mirror, "config", "--get", key).strip() == value
    # Whatever lands in the mirror's hooks directory is never run by the worker's git.
    canary = tmp_path / "canary"
    for hook in ("reference-transaction", "post-checkout", "pre-auto-gc"):
        path = mirror / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {canary}\n")
        path.chmod(0o755)
    github.add_commit("octo-org/tools", "main", {"HOOKED": "h\n"})
    ws = Workspace.clone(tmp_path / "b", url(github), "main", token, cached=entry)
    assert (ws.tree / "HOOKED").is_file()
    assert not canary.exists()


def test_the_cache_is_on_by_default_and_can_be_turned_off(tmp_path):
    on = WorkerSettings.parse(WORKSPACE_ROOT=str(tmp_path))
    assert on.repo_cache and on.repo_cache_dir == tmp_path / "repo-cache"
    off = WorkerSettings.parse(REPO_CACHE="false", REPO_CACHE_DIR=str(tmp_path / "c"))
    assert not off.repo_cache and off.repo_cache_dir == tmp_path / "c"
    with pytest.raises(ConfigError, match="REPO_CACHE_MAX_GB"):
        WorkerSettings.parse(REPO_CACHE_MAX_GB="0")


def test_the_packs_fetches_gather_are_merged_under_the_lock(github, token, cache, tmp_path):
    entry = cached(github, cache)
    pack_dir = cache.mirror_path(entry.key) / "objects" / "pack"
    counts = []
    for n in range(GC_PACKS + 1):
        github.add_commit("octo-org/tools", "main", {f"n{n}": f"{n}\n"})
        ws = Workspace.clone(tmp_path / str(n), url(github), "main", token, cached=entry)
        assert (ws.tree / f"n{n}").read_text() == f"{n}\n"
        ws.remove()
        counts.append(len(list(pack_dir.glob("*.pack"))))
    assert max(counts) == GC_PACKS - 1 < GC_PACKS, counts  # merged as the 20th arrived
    assert counts[-1] < GC_PACKS // 2, counts
    git_in(cache.mirror_path(entry.key), "fsck", "--connectivity-only", "--no-dangling")
