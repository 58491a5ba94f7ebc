"""Git side of the GitHub stand-in: bare repositories and smart HTTP via ``git http-backend``.

Server-side git commands run with a hermetic environment (no global or system config, a
private HOME), so a developer's ``~/.gitconfig`` cannot change what the stand-in does.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .github_objects import PRStats

ZERO_SHA = "0" * 40

# GitHub refuses pushes that touch workflow files unless the token has `workflows: write`.
# The stand-in enforces it with a pre-receive hook; the server passes the decision in
# STANDIN_WORKFLOWS_WRITE through git http-backend → git receive-pack → the hook.
PRE_RECEIVE_HOOK = """#!/bin/sh
[ "$STANDIN_WORKFLOWS_WRITE" = "1" ] && exit 0
zero=0000000000000000000000000000000000000000
status=0
while read old new ref; do
    [ "$new" = "$zero" ] && continue
    for commit in $(git rev-list "$new" --not --all); do
        for path in $(git diff-tree --no-commit-id --name-only -r --root "$commit"); do
            case "$path" in
            .github/workflows/*)
                echo "refusing to allow a GitHub App to create or update workflow" \\
                     "\\`$path\\` without \\`workflows\\` permission" >&2
                status=1
                ;;
            esac
        done
    done
done
exit $status
"""


@dataclass
class RefUpdate:
    ref: str
    old: str
    new: str
    applied: bool = False  # the ref holds `new` after the push
    forced: bool = False  # applied non-fast-forward update of an existing ref

    @property
    def created(self) -> bool:
        return self.old == ZERO_SHA

    @property
    def deleted(self) -> bool:
        return self.new == ZERO_SHA

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None


@dataclass
class Push:
    """One ``git push`` (a POST to git-receive-pack) received by the stand-in."""

    repo: str  # full name
    token: str | None
    updates: list[RefUpdate] = field(default_factory=list)

    @property
    def refs(self) -> list[str]:
        """Refs this push actually changed."""
        return [u.ref for u in self.updates if u.applied]

    @property
    def forced(self) -> bool:
        return any(u.forced and u.applied for u in self.updates)


def git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C",
        "LC_ALL": "C",
    }


def git(
    repo: Path, *args: str, env: dict[str, str], input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args],
        input=input,
        capture_output=True,
        env=env,
        check=check,
        timeout=60,
    )


def init_bare_repo(
    path: Path,
    default_branch: str,
    files: dict[str, str | bytes],
    env: dict[str, str],
    author: tuple[str, str] = ("Octo Initial", "initial@users.noreply.example.test"),
) -> str:
    """Create a bare repository with one commit holding ``files``; return its sha."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "init", "--bare", "--quiet", f"--initial-branch={default_branch}", str(path)],
        env=env,
        check=True,
        capture_output=True,
    )
    git(path, "config", "http.receivepack", "true", env=env)
    git(path, "config", "receive.denyNonFastForwards", "false", env=env)
    git(path, "config", "uploadpack.allowAnySHA1InWant", "true", env=env)
    hook = path / "hooks" / "pre-receive"
    hook.write_text(PRE_RECEIVE_HOOK)
    hook.chmod(0o755)

    index = path / "standin-initial-index"
    commit_env = {
        **env,
        "GIT_INDEX_FILE": str(index),
        "GIT_AUTHOR_NAME": author[0],
        "GIT_AUTHOR_EMAIL": author[1],
        "GIT_COMMITTER_NAME": author[0],
        "GIT_COMMITTER_EMAIL": author[1],
    }
    for name, content in sorted(files.items()):
        data = content.encode() if isinstance(content, str) else content
        blob = git(path, "hash-object", "-w", "--stdin", input=data, env=env).stdout.decode()
        git(
            path,
            "update-index",
            "--add",
            "--cacheinfo",
            f"100644,{blob.strip()},{name}",
            env=commit_env,
        )
    tree = git(path, "write-tree", env=commit_env).stdout.decode().strip()
    index.unlink(missing_ok=True)
    commit = (
        git(path, "commit-tree", tree, "-m", "Initial commit", env=commit_env)
        .stdout.decode()
        .strip()
    )
    git(path, "update-ref", f"refs/heads/{default_branch}", commit, env=env)
    return commit


def branches(path: Path, env: dict[str, str]) -> dict[str, str]:
    out = git(
        path, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/", env=env
    ).stdout.decode()
    result: dict[str, str] = {}
    for line in out.splitlines():
        name, sha = line.rsplit(" ", 1)
        result[name] = sha
    return result


def rev_parse(path: Path, ref: str, env: dict[str, str]) -> str | None:
    proc = git(path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", env=env, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode().strip() or None


def read_file(path: Path, ref: str, file_path: str, env: dict[str, str]) -> str | None:
    proc = git(path, "show", f"{ref}:{file_path}", env=env, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", errors="replace")


def is_ancestor(path: Path, old: str, new: str, env: dict[str, str]) -> bool:
    return git(path, "merge-base", "--is-ancestor", old, new, env=env, check=False).returncode == 0


def pr_stats(path: Path, base: str, head: str, env: dict[str, str]) -> PRStats:
    commits = git(path, "rev-list", "--count", f"{base}..{head}", env=env, check=False)
    numstat = git(path, "diff", "--numstat", f"{base}...{head}", env=env, check=False)
    stats = PRStats(commits=int(commits.stdout.decode().strip() or 0))
    for line in numstat.stdout.decode().splitlines():
        added, deleted, _ = line.split("\t", 2)
        stats.changed_files += 1
        stats.additions += int(added) if added.isdigit() else 0
        stats.deletions += int(deleted) if deleted.isdigit() else 0
    return stats


def parse_receive_pack_commands(body: bytes, content_encoding: str | None) -> list[RefUpdate]:
    """Read the ref-update commands at the start of a git-receive-pack request body."""
    if content_encoding and content_encoding.lower() in ("gzip", "x-gzip"):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return []
    updates: list[RefUpdate] = []
    pos = 0
    while pos + 4 <= len(body):
        try:
            length = int(body[pos : pos + 4], 16)
        except ValueError:
            break
        if length == 0:  # flush-pkt: end of the command list
            break
        line = body[pos + 4 : pos + length]
        pos += length
        line = line.split(b"\0", 1)[0].rstrip(b"\n")
        parts = line.decode("utf-8", errors="replace").split(" ")
        if len(parts) == 3 and len(parts[0]) == 40 and len(parts[1]) == 40:
            updates.append(RefUpdate(ref=parts[2], old=parts[0], new=parts[1]))
    return updates


@dataclass
class CGIResult:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Iterator[bytes]


def run_http_backend(
    *,
    project_root: Path,
    path_info: str,
    query_string: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
    remote_user: str,
    remote_addr: str,
    env: dict[str, str],
    on_complete: Callable[[int], None] | None = None,
) -> CGIResult:
    """Run ``git http-backend`` as a CGI and stream its answer.

    ``on_complete(returncode)`` runs after the CGI exits and *before* the last chunk of the
    answer is handed to the client, so whatever it records is visible once the client's git
    command returns.
    """
    cgi_env = {
        **env,
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string,
        "REMOTE_USER": remote_user,
        "REMOTE_ADDR": remote_addr,
        "CONTENT_TYPE": headers.get("content-type", ""),
    }
    if method == "POST":
        cgi_env["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers.items():
        if name in ("authorization", "content-type", "content-length", "transfer-encoding"):
            continue
        cgi_env["HTTP_" + name.upper().replace("-", "_")] = value

    proc = subprocess.Popen(
        ["git", "http-backend"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cgi_env,
    )

    def feed() -> None:
        try:
            if body:
                proc.stdin.write(body)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    stderr_chunks: list[bytes] = []
    feeder = threading.Thread(target=feed, daemon=True)
    drainer = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    feeder.start()
    drainer.start()

    # CGI header block
    raw = b""
    while b"\r\n\r\n" not in raw and b"\n\n" not in raw:
        chunk = proc.stdout.read1(65536)
        if not chunk:
            break
        raw += chunk
    sep = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
    head, _, rest = raw.partition(sep)
    status, reason = 200, "OK"
    out_headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        if ":" not in line:
            continue
        name, value = (part.strip() for part in line.split(":", 1))
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
        else:
            out_headers.append((name, value))
    if not head and not rest:
        proc.wait()
        status, reason = 500, "Internal Server Error"

    def stream() -> Iterator[bytes]:
        pending = rest
        try:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                if pending:
                    yield pending
                pending = chunk
            feeder.join()
            returncode = proc.wait()
            drainer.join()
            if on_complete is not None:
                on_complete(returncode)
            if pending:
                yield pending
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    return CGIResult(status=status, reason=reason, headers=out_headers, body=stream())
