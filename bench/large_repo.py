"""A large repository for the repository cache's measurement, built once and kept in .cache/bench.

Made from real projects' sources found on this machine (the virtualenv's site-packages, the
Python standard library, /usr/include and /usr/share), written with `git fast-import`:

* the files are added in path order, `ADD_BATCH` per commit (a project that grew file by file);
* then `EDIT_COMMITS` commits each edit `EDIT_FILES` of them (a long tail of small changes);
* the result is repacked with a bitmap index, as GitHub serves its repositories.

    .venv/bin/python bench/large_repo.py            # builds it (a few minutes) or reuses it

With `--history-from REPO` (any local clone of a real project, e.g. `git clone --mirror
https://github.com/git/git`), that project's whole default-branch history is merged in under
`upstream/`, with its own tree: a history as deep as real projects have (git's: about 82,000
commits and 850,000 objects), where the synthetic one is 4,500 commits deep. A full clone pays
for every object of it; a session from the cache pays for none of them.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / ".cache" / "bench" / "large-repo.git"
SOURCES = (
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}",
    Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"),
    Path("/usr/include"),
    Path("/usr/share"),
)
FILES = 60_000
MAX_FILE_BYTES = 256 * 1024
ADD_BATCH = 40
EDIT_COMMITS = 1_500
EDIT_FILES = 3
_START = 1_600_000_000  # commit times: one minute apart from here


def _git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(BUILT.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


def source_files() -> list[tuple[str, Path]]:
    """Up to FILES (repository path, file) pairs: regular files, no links, plain names."""
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for top in SOURCES:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in sorted(filenames):
                path = Path(dirpath, name)
                relative = f"{top.name}/{path.relative_to(top)}"
                if (
                    relative in seen
                    or not relative.isascii()
                    or any(c in relative for c in '"\\\n')
                ):
                    continue
                if path.is_symlink() or not path.is_file() or name.endswith(".pyc"):
                    continue
                try:
                    if path.stat().st_size > MAX_FILE_BYTES or not os.access(path, os.R_OK):
                        continue
                except OSError:
                    continue
                seen.add(relative)
                found.append((relative, path))
                if len(found) >= FILES:
                    return found
    return found


def _commit(mark: int, message: str, changes: list[tuple[str, bytes]]) -> Iterator[bytes]:
    stamp = _START + 60 * mark
    text = message.encode()
    yield b"commit refs/heads/main\n"
    yield b"mark :%d\n" % mark
    yield b"committer Bench <bench@example.test> %d +0000\n" % stamp
    yield b"data %d\n%s\n" % (len(text), text)
    if mark > 1:
        yield b"from :%d\n" % (mark - 1)
    for path, data in changes:
        yield b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data)


def fast_import_stream(files: list[tuple[str, Path]]) -> Iterator[bytes]:
    contents: dict[str, bytes] = {}
    mark = 0
    for start in range(0, len(files), ADD_BATCH):
        batch = []
        for relative, path in files[start : start + ADD_BATCH]:
            try:
                contents[relative] = path.read_bytes()
            except OSError:
                continue
            batch.append((relative, contents[relative]))
        mark += 1
        yield from _commit(mark, f"Add {batch[0][0]} and {len(batch) - 1} more", batch)
    picker = random.Random(13)
    names = sorted(contents)
    for n in range(EDIT_COMMITS):
        edits = []
        for relative in picker.sample(names, EDIT_FILES):
            contents[relative] += b"\n# revision %d\n" % n
            edits.append((relative, contents[relative]))
        mark += 1
        yield from _commit(mark, f"Edit {edits[0][0]} and {len(edits) - 1} more", edits)


def built_path(history: Path | None) -> Path:
    return BUILT if history is None else BUILT.with_name(f"large-repo+{history.name}.git")


def build(history: Path | None = None) -> Path:
    """The built repository (bare), built now if it is not there yet."""
    target = built_path(history)
    if (target / "refs" / "heads" / "main").exists() or (target / "packed-refs").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    env = _git_env()
    subprocess.run(["git", "init", "--bare", "--quiet", str(partial)], check=True, env=env)
    began = time.monotonic()
    files = source_files()
    print(f"building {target}: {len(files)} files", flush=True)
    importer = subprocess.Popen(
        ["git", f"--git-dir={partial}", "fast-import", "--quiet"], stdin=subprocess.PIPE, env=env
    )
    assert importer.stdin is not None
    for chunk in fast_import_stream(files):
        importer.stdin.write(chunk)
    importer.stdin.close()
    if importer.wait() != 0:
        raise SystemExit("git fast-import failed")
    if history is not None:
        merge_history(partial, history, env)
    subprocess.run(
        ["git", f"--git-dir={partial}", "repack", "-a", "-d", "-q", "--write-bitmap-index"],
        check=True,
        env=env,
    )
    partial.rename(target)
    print(f"built in {time.monotonic() - began:.0f} s", flush=True)
    return target


def _output(git: list[str], *args: str, env: dict[str, str], given: str | None = None) -> str:
    done = subprocess.run(
        [*git, *args], check=True, capture_output=True, text=True, env=env, input=given
    )
    return done.stdout.strip()


def merge_history(repo: Path, history: Path, env: dict[str, str]) -> None:
    """`history`'s default branch merged into main under upstream/: main's files stay as they
    are, and every commit of the other project becomes part of main's history."""
    git = ["git", f"--git-dir={repo}"]
    head = _output(["git", f"--git-dir={history}"], "symbolic-ref", "--short", "HEAD", env=env)
    print(f"merging the history of {history} ({head})", flush=True)
    fetch = [*git, "fetch", "--quiet", "--no-tags", str(history), f"+{head}:refs/upstream"]
    subprocess.run(fetch, check=True, env=env)
    # main's top-level entries and one more: upstream/, the other project's tree as it is.
    entries = _output(git, "ls-tree", "main", env=env)
    upstream = _output(git, "rev-parse", "refs/upstream^{tree}", env=env)
    tree = _output(git, "mktree", env=env, given=f"{entries}\n040000 tree {upstream}\tupstream\n")
    who = {"GIT_COMMITTER_DATE": "1700000000 +0000", "GIT_AUTHOR_DATE": "1700000000 +0000"}
    for role in ("AUTHOR", "COMMITTER"):
        who |= {f"GIT_{role}_NAME": "Bench", f"GIT_{role}_EMAIL": "bench@example.test"}
    parents = ["-p", "main", "-p", "refs/upstream"]
    merge = _output(git, "commit-tree", tree, *parents, "-m", f"Merge {head}", env={**env, **who})
    subprocess.run([*git, "update-ref", "refs/heads/main", merge], check=True, env=env)
    subprocess.run([*git, "update-ref", "-d", "refs/upstream"], check=True, env=env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history-from", type=Path, help="a local clone whose history to merge")
    print(build(parser.parse_args().history_from))
