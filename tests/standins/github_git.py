"""Git side of the GitHub stand-in: bare repositories and smart HTTP via ``git http-backend``.

Also the plumbing behind the REST answers: commits written without a work tree (builders),
forks, tree and blob lookups (contents API), and pull-request diffs as GitHub computes them
(``base...head``: from the merge base), with GitHub's diff positions for review comments.

Server-side git commands run with a hermetic environment (no global or system config, a
private HOME), so a developer's ``~/.gitconfig`` cannot change what the stand-in does.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BufferedReader
from pathlib import Path

from .github_objects import PRStats

ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class Symlink:
    """A file value for the builders: a symbolic link (mode 120000) pointing at ``target``."""

    target: str


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


def configure_repo(path: Path, env: dict[str, str]) -> None:
    """Server-side settings of a stand-in repository (as GitHub behaves):

    * pushes over HTTP are accepted, forced ones too (no branch protection);
    * ``refs/pull/*`` is hidden from receive-pack, so a push to it is refused ("deny updating
      a hidden ref") while fetches still see it;
    * any reachable object may be fetched by id (shallow fetches of a sha);
    * the workflow-permission pre-receive hook.
    """
    git(path, "config", "http.receivepack", "true", env=env)
    git(path, "config", "receive.denyNonFastForwards", "false", env=env)
    git(path, "config", "receive.hideRefs", "refs/pull", env=env)
    git(path, "config", "uploadpack.allowAnySHA1InWant", "true", env=env)
    hook = path / "hooks" / "pre-receive"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(PRE_RECEIVE_HOOK)
    hook.chmod(0o755)


def commit_files(
    path: Path,
    parent: str | None,
    files: dict[str, str | bytes | Symlink | None],
    message: str,
    author: tuple[str, str],
    env: dict[str, str],
) -> str:
    """Write a commit on top of ``parent`` (None: a root commit) that sets each file of
    ``files`` (``None`` deletes it); return its sha. No ref is moved."""
    index = path / f"standin-index-{threading.get_ident()}"
    commit_env = {
        **env,
        "GIT_INDEX_FILE": str(index),
        "GIT_AUTHOR_NAME": author[0],
        "GIT_AUTHOR_EMAIL": author[1],
        "GIT_COMMITTER_NAME": author[0],
        "GIT_COMMITTER_EMAIL": author[1],
    }
    try:
        if parent is not None:
            git(path, "read-tree", parent, env=commit_env)
        entries = []
        for name, content in sorted(files.items()):
            if content is None:  # mode 0 removes the entry
                entries.append(f"0 {ZERO_SHA}\t{name}\0")
                continue
            mode = "120000" if isinstance(content, Symlink) else "100644"
            if isinstance(content, Symlink):
                content = content.target
            data = content.encode() if isinstance(content, str) else content
            blob = git(path, "hash-object", "-w", "--stdin", input=data, env=env).stdout.decode()
            entries.append(f"{mode} {blob.strip()}\t{name}\0")
        index_info = "".join(entries).encode()
        git(path, "update-index", "-z", "--index-info", input=index_info, env=commit_env)
        tree = git(path, "write-tree", env=commit_env).stdout.decode().strip()
    finally:
        index.unlink(missing_ok=True)
    parents = ["-p", parent] if parent is not None else []
    proc = git(path, "commit-tree", tree, *parents, "-m", message, env=commit_env)
    return proc.stdout.decode().strip()


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
    configure_repo(path, env)
    commit = commit_files(path, None, dict(files), "Initial commit", author, env)
    git(path, "update-ref", f"refs/heads/{default_branch}", commit, env=env)
    return commit


def fork_bare_repo(source: Path, path: Path, env: dict[str, str]) -> None:
    """Create ``path`` as a fork of ``source``: its branches and tags, no ``refs/pull/*``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "clone", "--bare", "--quiet", "--no-hardlinks", str(source), str(path)],
        env=env,
        check=True,
        capture_output=True,
    )
    git(path, "remote", "remove", "origin", env=env)
    configure_repo(path, env)


def update_ref(path: Path, ref: str, new: str, env: dict[str, str]) -> None:
    git(path, "update-ref", ref, new, env=env)


def fetch_ref(path: Path, source: Path, refspec: str, env: dict[str, str]) -> None:
    """Fetch ``refspec`` from the repository at ``source`` into ``path`` (objects and ref)."""
    options = ("--quiet", "--no-tags", "--no-write-fetch-head")
    git(path, "fetch", *options, str(source), refspec, env=env)


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


def merge_base(path: Path, base: str, head: str, env: dict[str, str]) -> str | None:
    proc = git(path, "merge-base", base, head, env=env, check=False)
    return proc.stdout.decode().strip() or None


# --------------------------------------------------------------------------- trees and blobs


@dataclass
class TreeEntry:
    mode: str
    kind: str  # "blob" | "tree" | "commit" (a submodule)
    sha: str
    size: int | None  # blobs only
    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def content_type(self) -> str:
        """The ``type`` the contents API reports: file, dir, symlink or submodule."""
        if self.kind == "tree":
            return "dir"
        if self.kind == "commit":
            return "submodule"
        return "symlink" if self.mode == "120000" else "file"


def _ls_tree(path: Path, commit: str, spec: str, env: dict[str, str]) -> list[TreeEntry]:
    proc = git(path, "ls-tree", "-z", "-l", "--full-tree", commit, "--", spec, env=env, check=False)
    entries = []
    for record in proc.stdout.decode("utf-8", errors="surrogateescape").split("\0"):
        if not record:
            continue
        meta, _, name = record.partition("\t")
        mode, kind, sha, size = meta.split()
        entries.append(TreeEntry(mode, kind, sha, int(size) if size.isdigit() else None, name))
    return entries


def tree_entry(path: Path, commit: str, file_path: str, env: dict[str, str]) -> TreeEntry | None:
    """The entry at ``file_path`` in ``commit`` (a blob, tree or submodule), or None."""
    file_path = file_path.strip("/")
    if not file_path:
        return None
    for entry in _ls_tree(path, commit, file_path, env):
        if entry.path == file_path:
            return entry
    return None


def list_tree(path: Path, commit: str, dir_path: str, env: dict[str, str]) -> list[TreeEntry]:
    """The entries directly inside directory ``dir_path`` of ``commit``."""
    dir_path = dir_path.strip("/")
    return _ls_tree(path, commit, f"{dir_path}/" if dir_path else ".", env)


def read_blob(path: Path, sha: str, env: dict[str, str]) -> bytes:
    return git(path, "cat-file", "blob", sha, env=env).stdout


# --------------------------------------------------------------------------- diffs and commits


@dataclass
class FileChange:
    """One file of a pull request's diff, as ``GET …/pulls/{n}/files`` describes it."""

    filename: str
    status: str  # added | removed | modified | renamed | copied | changed
    additions: int
    deletions: int
    sha: str | None  # blob id: the new one, or the old one for a removed file
    previous_filename: str | None = None
    patch: str | None = None  # the hunks, from the first "@@"; None for binaries / no content

    @property
    def changes(self) -> int:
        return self.additions + self.deletions


_RAW_STATUS = {
    "A": "added",
    "D": "removed",
    "M": "modified",
    "R": "renamed",
    "C": "copied",
    "T": "changed",
}
_DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--find-renames")


def diff_files(path: Path, base: str, head: str, env: dict[str, str]) -> list[FileChange]:
    """The files changed between the merge base of ``base`` and ``head`` and ``head``."""
    start = merge_base(path, base, head, env) or base
    raw = git(path, "diff", *_DIFF_OPTIONS, "-z", "--raw", "--no-abbrev", start, head, env=env)
    numstat = git(path, "diff", *_DIFF_OPTIONS, "-z", "--numstat", start, head, env=env)
    patch = git(path, "diff", *_DIFF_OPTIONS, start, head, env=env)

    fields = raw.stdout.decode("utf-8", errors="surrogateescape").split("\0")
    changes: list[FileChange] = []
    i = 0
    while i < len(fields) and fields[i].startswith(":"):
        _old_mode, _new_mode, old_sha, new_sha, code = fields[i][1:].split()
        kind = code[0]
        if kind in "RC":
            previous, name = fields[i + 1], fields[i + 2]
            i += 3
        else:
            previous, name = None, fields[i + 1]
            i += 2
        status = _RAW_STATUS.get(kind, "modified")
        changes.append(
            FileChange(
                filename=name,
                status=status,
                additions=0,
                deletions=0,
                sha=old_sha if status == "removed" else new_sha,
                previous_filename=previous,
            )
        )

    counts = numstat.stdout.decode("utf-8", errors="surrogateescape").split("\0")
    j = 0
    for change in changes:
        added, deleted, name = counts[j].split("\t", 2)
        j += 3 if name == "" else 1  # a rename: "a\td\t\0old\0new"
        change.additions = int(added) if added.isdigit() else 0
        change.deletions = int(deleted) if deleted.isdigit() else 0

    text = patch.stdout.decode("utf-8", errors="replace")
    chunks = re.split(r"^(?=diff --git )", text, flags=re.MULTILINE)
    chunks = [chunk for chunk in chunks if chunk.startswith("diff --git ")]
    for change, chunk in zip(changes, chunks, strict=False):
        hunk_at = re.search(r"^@@ ", chunk, flags=re.MULTILINE)
        if hunk_at is not None:
            change.patch = chunk[hunk_at.start() :].removesuffix("\n")
    return changes


def unified_diff(path: Path, base: str, head: str, env: dict[str, str]) -> str:
    """What GitHub serves as a pull request's ``.diff``: ``git diff base...head``."""
    start = merge_base(path, base, head, env) or base
    return git(path, "diff", *_DIFF_OPTIONS, start, head, env=env).stdout.decode(
        "utf-8", errors="replace"
    )


@dataclass
class CommitInfo:
    sha: str
    tree: str
    parents: list[str]
    author_name: str
    author_email: str
    author_date: str  # ISO 8601, UTC ("…Z")
    committer_name: str
    committer_email: str
    committer_date: str
    message: str


def _utc(stamp: str) -> str:
    moment = datetime.fromisoformat(stamp).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def log_commits(path: Path, base: str, head: str, env: dict[str, str]) -> list[CommitInfo]:
    """Commits reachable from ``head`` and not from ``base``, oldest first."""
    fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B%x1e"
    proc = git(path, "log", "--reverse", f"--format={fmt}", f"{base}..{head}", env=env)
    commits = []
    for record in proc.stdout.decode("utf-8", errors="replace").split("\x1e"):
        record = record.lstrip("\n")
        if not record:
            continue
        sha, tree, parents, an, ae, ad, cn, ce, cd, message = record.split("\0", 9)
        commits.append(
            CommitInfo(
                sha=sha,
                tree=tree,
                parents=parents.split(),
                author_name=an,
                author_email=ae,
                author_date=_utc(ad),
                committer_name=cn,
                committer_email=ce,
                committer_date=_utc(cd),
                message=message.rstrip("\n"),
            )
        )
    return commits


# --------------------------------------------------------------------------- diff positions


@dataclass
class PatchLine:
    """One line of a file's patch. ``position`` is GitHub's diff position: the line's index
    below the first hunk header (which is position 0)."""

    position: int
    kind: str  # "@" hunk header, "+" added, "-" removed, " " context, "\\" no-newline marker
    old: int | None  # line number in the old file (removed and context lines)
    new: int | None  # line number in the new file (added and context lines)
    hunk: int  # index of the hunk the line belongs to
    hunk_start: int  # position of that hunk's header


_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def patch_lines(patch: str) -> list[PatchLine]:
    lines: list[PatchLine] = []
    old = new = 0
    hunk = -1
    hunk_start = 0
    for position, text in enumerate(patch.split("\n")):
        header = _HUNK_HEADER.match(text)
        if header:
            old, new = int(header.group(1)), int(header.group(2))
            hunk += 1
            hunk_start = position
            lines.append(PatchLine(position, "@", None, None, hunk, hunk_start))
            continue
        kind = text[:1] or " "
        if kind == "+":
            lines.append(PatchLine(position, kind, None, new, hunk, hunk_start))
            new += 1
        elif kind == "-":
            lines.append(PatchLine(position, kind, old, None, hunk, hunk_start))
            old += 1
        elif kind == "\\":
            lines.append(PatchLine(position, kind, None, None, hunk, hunk_start))
        else:
            lines.append(PatchLine(position, " ", old, new, hunk, hunk_start))
            old += 1
            new += 1
    return lines


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


@dataclass(frozen=True)
class CGIRequest:
    """The parts of a smart-HTTP request ``git http-backend`` reads (``headers`` lower-cased)."""

    method: str
    path_info: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    remote_user: str
    remote_addr: str


def run_http_backend(
    project_root: Path,
    request: CGIRequest,
    env: dict[str, str],
    on_complete: Callable[[int], None] | None = None,
) -> CGIResult:
    """Run ``git http-backend`` as a CGI and stream its answer.

    ``on_complete(returncode)`` runs after the CGI exits and *before* the last chunk of the
    answer is handed to the client, so whatever it records is visible once the client's git
    command returns.
    """
    body = request.body
    proc = subprocess.Popen(
        ["git", "http-backend"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cgi_env(project_root, request, env),
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

    head, rest = _read_cgi_head(proc.stdout)
    status, reason, out_headers = _parse_cgi_head(head)
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


def _cgi_env(project_root: Path, request: CGIRequest, env: dict[str, str]) -> dict[str, str]:
    cgi_env = {
        **env,
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path_info,
        "QUERY_STRING": request.query_string,
        "REMOTE_USER": request.remote_user,
        "REMOTE_ADDR": request.remote_addr,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
    }
    if request.method == "POST":
        cgi_env["CONTENT_LENGTH"] = str(len(request.body))
    for name, value in request.headers.items():
        if name in ("authorization", "content-type", "content-length", "transfer-encoding"):
            continue
        cgi_env["HTTP_" + name.upper().replace("-", "_")] = value
    return cgi_env


def _read_cgi_head(stdout: BufferedReader) -> tuple[bytes, bytes]:
    """The CGI's header block, and what came after it in the same reads."""
    raw = b""
    while b"\r\n\r\n" not in raw and b"\n\n" not in raw:
        chunk = stdout.read1(65536)
        if not chunk:
            break
        raw += chunk
    sep = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
    head, _, rest = raw.partition(sep)
    return head, rest


def _parse_cgi_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        if ":" not in line:
            continue
        name, value = (part.strip() for part in line.split(":", 1))
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
        else:
            headers.append((name, value))
    return status, reason, headers
