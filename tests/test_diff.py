"""jobs/github/diff.py on diffs made by real `git diff` (the format GitHub's PR `.diff` returns)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from jobs.github.diff import (
    annotate_diff,
    commentable,
    commentable_range,
    parse_diff,
    parse_pull_files,
)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = dict(os.environ, **GIT_ENV)
        return subprocess.run(
            ["git", *args], cwd=self.root, env=env, check=True, capture_output=True
        ).stdout.decode("utf-8", "replace")

    def write(self, path: str, content: str | bytes) -> None:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.encode())

    def commit(self) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "c")
        return self.git("rev-parse", "HEAD").strip()

    def diff(self, base: str, head: str = "HEAD") -> str:
        # What GitHub's compare/PR diff is: base...head with rename detection.
        return self.git("diff", "-M", f"{base}...{head}")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def lines(n: int, fmt: str = "l{}") -> str:
    return "".join(fmt.format(i) + "\n" for i in range(1, n + 1))


def test_modified_file_with_two_hunks(repo):
    repo.write("src/app.py", lines(100))
    base = repo.commit()
    text = lines(100).replace("l10\n", "l10\nnew a\nnew b\n").replace("l80\n", "L80\n")
    repo.write("src/app.py", text)
    repo.commit()

    diff = repo.diff(base)
    index = parse_diff(diff)

    f = index.get("src/app.py")
    assert f is not None and f.status == "modified" and not f.binary
    assert f.old_path == f.new_path == "src/app.py"
    assert [(h.old_start, h.old_count, h.new_start, h.new_count) for h in f.hunks] == [
        (8, 6, 8, 8),
        (77, 7, 79, 7),
    ]
    assert f.right == set(range(8, 16)) | set(range(79, 86))
    assert f.left == set(range(8, 14)) | set(range(77, 84))
    assert commentable(index, "src/app.py", 11)  # added
    assert commentable(index, "src/app.py", 82)  # the changed line, new numbering
    assert commentable(index, "src/app.py", 80, "LEFT")  # removed, old numbering
    assert commentable(index, "src/app.py", 8, "left")  # context, either side
    assert not commentable(index, "src/app.py", 50)
    assert not commentable(index, "src/app.py", 16)
    assert not commentable(index, "src/app.py", 14, "LEFT")
    assert not commentable(index, "other.py", 11)
    assert commentable_range(index, "src/app.py", 9, 12)
    assert not commentable_range(index, "src/app.py", 12, 80)  # two hunks
    assert not commentable_range(index, "src/app.py", 12, 12)
    # tolerated spellings of the path
    for spelling in ("./src/app.py", "/workspace/src/app.py", "b/src/app.py"):
        assert commentable(index, spelling, 11)


def test_rename_with_edit_and_spaces(repo):
    repo.write("ren.txt", lines(20))
    base = repo.commit()
    (repo.root / "dir x").mkdir()
    repo.git("mv", "ren.txt", "dir x/ren amed.txt")
    repo.write("dir x/ren amed.txt", lines(20).replace("l5\n", "five\n"))
    repo.commit()

    diff = repo.diff(base)
    assert "rename from ren.txt" in diff and "+++ b/dir x/ren amed.txt\t" in diff
    index = parse_diff(diff)

    assert list(index) == ["dir x/ren amed.txt"]
    f = index.get("dir x/ren amed.txt")
    assert f.status == "renamed" and f.old_path == "ren.txt"
    assert f.right == set(range(2, 9)) and f.left == set(range(2, 9))
    assert index.resolve("ren.txt") == "dir x/ren amed.txt"  # the old name finds it
    assert commentable(index, "ren.txt", 5)


def test_pure_rename_has_no_lines(repo):
    repo.write("old name.md", lines(5))
    base = repo.commit()
    repo.git("mv", "old name.md", "new name.md")
    repo.commit()

    index = parse_diff(repo.diff(base))

    f = index.get("new name.md")
    assert f.status == "renamed" and f.old_path == "old name.md" and f.hunks == []
    assert not commentable(index, "new name.md", 1)


def test_new_and_deleted_files(repo):
    repo.write("gone.txt", lines(4))
    repo.write("keep.txt", "k\n")
    base = repo.commit()
    repo.git("rm", "-q", "gone.txt")
    repo.write("n ew.txt", lines(3, "fresh {}"))
    repo.commit()

    index = parse_diff(repo.diff(base))

    new = index.get("n ew.txt")
    assert new.status == "added" and new.old_path is None
    assert new.right == {1, 2, 3} and new.left == set()
    gone = index.get("gone.txt")
    assert gone.status == "deleted" and gone.new_path is None and gone.path == "gone.txt"
    assert gone.left == {1, 2, 3, 4} and gone.right == set()
    assert commentable(index, "gone.txt", 2, "LEFT")
    assert not commentable(index, "gone.txt", 2)
    assert "keep.txt" not in index


def test_binary_files(repo):
    repo.write("img.png", b"\x89PNG\x00\x01\x02")
    base = repo.commit()
    repo.write("img.png", b"\x89PNG\x00\x03\x04")
    repo.write("odd b/new.bin", b"\x00\xff\x00")  # no ---/+++ lines: path from the header
    repo.commit()

    diff = repo.diff(base)
    assert "Binary files" in diff
    index = parse_diff(diff)

    assert index.get("img.png").binary and index.get("img.png").status == "modified"
    new = index.get("odd b/new.bin")
    assert new is not None and new.binary and new.status == "added"
    assert not commentable(index, "img.png", 1)


def test_no_newline_at_end_of_file(repo):
    repo.write("a.txt", "x")
    repo.write("b.txt", "a\nb")
    base = repo.commit()
    repo.write("a.txt", "y")
    repo.write("b.txt", "a\nb\nc\n")
    repo.commit()

    diff = repo.diff(base)
    assert diff.count("\\ No newline at end of file") == 3
    index = parse_diff(diff)

    assert index.get("a.txt").right == {1} and index.get("a.txt").left == {1}
    assert index.get("b.txt").right == {1, 2, 3}
    assert index.get("b.txt").left == {1, 2}


def test_lines_that_look_like_headers(repo):
    # Removing "-- x" gives "--- x" and adding "++ y" gives "+++ y" inside a hunk.
    repo.write("q.sql", "select 1;\n-- x\n-- keep\n")
    repo.write("p.patch", "note\n")
    base = repo.commit()
    repo.write("q.sql", "select 1;\n++ y\n-- keep\n")
    repo.write("p.patch", "note\ndiff --git a/evil b/evil\n@@ -1 +1 @@\n")
    repo.commit()

    diff = repo.diff(base)
    assert "\n--- x\n" in diff and "\n+++ y\n" in diff
    index = parse_diff(diff)

    assert sorted(index) == ["p.patch", "q.sql"]
    q = index.get("q.sql")
    assert q.old_path == q.new_path == "q.sql"
    assert q.right == {1, 2, 3} and q.left == {1, 2, 3}
    assert index.get("p.patch").right == {1, 2, 3}


def test_quoted_non_ascii_path_and_mode_change(repo):
    repo.write("tést dir/é.txt", "a\n")
    repo.write("run.sh", "echo\n")
    base = repo.commit()
    repo.write("tést dir/é.txt", "b\n")
    os.chmod(repo.root / "run.sh", 0o755)
    repo.commit()

    diff = repo.diff(base)
    assert '"a/t\\303\\251st dir/\\303\\251.txt"' in diff
    index = parse_diff(diff)

    assert commentable(index, "tést dir/é.txt", 1)
    run = index.get("run.sh")
    assert run is not None and run.hunks == [] and run.status == "modified"


def test_crlf_file(repo):
    repo.write("w.txt", "a\r\nb\r\nc\r\n")
    base = repo.commit()
    repo.write("w.txt", "a\r\nB\r\nc\r\n")
    repo.commit()

    index = parse_diff(repo.diff(base))

    assert index.get("w.txt").right == {1, 2, 3}


def test_empty_and_garbage():
    assert len(parse_diff("")) == 0
    assert len(parse_diff("not a diff\n@@ nonsense @@\n+x\n")) == 0
    # truncated mid-hunk: what was read is kept
    truncated = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,3 +1,4 @@\n a\n+b\n"
    assert parse_diff(truncated).get("x").right == {1, 2}


def test_annotate_diff_numbers_match_the_index(repo):
    repo.write("m.py", lines(30))
    base = repo.commit()
    repo.write("m.py", lines(30).replace("l10\n", "l10\nadded\n").replace("l20\n", ""))
    repo.commit()
    diff = repo.diff(base)

    shown = annotate_diff(diff)

    index = parse_diff(diff)
    rows = [line for line in shown.split("\n") if line[12:13] == "|"]
    assert rows
    for row in rows:
        old, new, text = row[:5].strip(), row[6:11].strip(), row[13:]
        if new:
            assert commentable(index, "m.py", int(new))
        if old:
            assert commentable(index, "m.py", int(old), "LEFT")
        if text.startswith("+"):
            assert not old and new
    added = next(row for row in rows if row.endswith("|+added"))
    assert added.split("|")[0].split() == ["11"]
    removed = next(row for row in rows if row.endswith("|-l20"))
    assert removed.split("|")[0].split() == ["20"]
    # headers are kept verbatim
    assert "diff --git a/m.py b/m.py" in shown
    assert shown.count("@@ -") == 2


def test_pull_files_fallback_matches_the_diff(repo):
    # GET /pulls/{n}/files gives each file's hunks as `patch` (no headers): same lines.
    repo.write("src/app.py", lines(100))
    repo.write("gone.txt", lines(4, "gone {}"))
    repo.write("ren.txt", lines(20))
    base = repo.commit()
    repo.write("src/app.py", lines(100).replace("l10\n", "l10\nnew a\n").replace("l80\n", "X\n"))
    repo.git("rm", "-q", "gone.txt")
    repo.git("mv", "ren.txt", "moved.txt")
    repo.write("moved.txt", lines(20).replace("l5\n", "five\n"))
    repo.write("added.txt", lines(2, "fresh {}"))
    repo.commit()
    diff = repo.diff(base)
    statuses = {
        "added": "added",
        "deleted": "removed",
        "renamed": "renamed",
        "modified": "modified",
    }

    files = []
    for f in parse_diff(diff).files.values():
        patch = repo.git("diff", "-M", f"{base}...HEAD", "--", *{f.old_path, f.new_path} - {None})
        item = {"filename": f.path, "status": statuses[f.status]}
        if f.status == "renamed":
            item["previous_filename"] = f.old_path
        item["patch"] = patch[patch.index("@@") :].rstrip("\n")  # GitHub's patch: hunks only
        files.append(item)
    files.append({"filename": "logo.png", "status": "modified"})  # binary: no patch

    fallback, full = parse_pull_files(files), parse_diff(diff)
    for path, f in full.files.items():
        g = fallback.get(path)
        assert (g.status, g.old_path, g.new_path) == (f.status, f.old_path, f.new_path), path
        assert (g.right, g.left) == (f.right, f.left), path
    assert fallback.resolve("ren.txt") == "moved.txt"
    assert commentable(fallback, "src/app.py", 11)
    assert not commentable(fallback, "logo.png", 1)
