"""Claude's change to a fork's pull request as suggestions and a patch (jobs/github/suggestions.py).

Diffs come from real git: the pull request's (base...head) and Claude's (head -> change, no
context lines). Applying every suggestion to the head must give Claude's files, and the patch
must apply with `git am` where suggestions cannot reach.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jobs.github.diff import parse_diff
from jobs.github.suggestions import MAX_PATCH, Suggestion, fence, offer, quoted_patch

BASE = {
    "greet.py": "".join(f"line {i}\n" for i in range(1, 41)),
    "other.py": "untouched = True\n",
}


def git(repo: Path, *args: str, input: str | None = None) -> str:
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        env=env,
        input=input,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "--all")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, BASE, "base")
    lines = BASE["greet.py"].splitlines(keepends=True)
    lines[9] = "line 10, changed by the pull request\n"
    lines[29] = "line 30, changed by the pull request\n"
    head = commit(repo, {"greet.py": "".join(lines)}, "the pull request")
    return repo, base, head


def lines_at(repo: Path, rev: str):
    def read(path: str) -> list[str] | None:
        try:
            return git(repo, "cat-file", "blob", f"{rev}:{path}").splitlines()
        except subprocess.CalledProcessError:
            return None

    return read


def claude_changes(repo, head, files):
    change = commit(repo, files, "claude")
    diff = git(repo, "diff", "--no-renames", "-U0", head, change)
    pull = git(repo, "diff", f"{head}~1...{head}")
    return change, offer(
        parse_diff(diff), parse_diff(pull), lines_at(repo, head), lines_at(repo, change)
    )


def apply(head_lines: list[str], suggestions: list[Suggestion]) -> list[str]:
    out = list(head_lines)
    for s in sorted(suggestions, key=lambda s: s.start_line, reverse=True):
        out[s.start_line - 1 : s.line] = list(s.lines)
    return out


def test_changes_inside_the_diff_become_suggestions_that_reproduce_claudes_file(repo):
    path, base, head = repo
    lines = git(path, "show", f"{head}:greet.py").splitlines(keepends=True)
    lines[9] = "line 10, fixed by Claude\n"  # a line the pull request changed
    lines[10:12] = []  # two context lines after it: deleted
    lines.insert(29, "inserted before line 30\n")  # an insertion inside the second hunk
    change, result = claude_changes(path, head, {"greet.py": "".join(lines)})
    assert result.patch_paths == []
    assert {s.path for s in result.suggestions} == {"greet.py"}
    head_lines = git(path, "show", f"{head}:greet.py").splitlines()
    changed = git(path, "show", f"{change}:greet.py").splitlines()
    assert apply(head_lines, result.suggestions) == changed
    comments = [s.comment() for s in result.suggestions]
    assert all(c["side"] == "RIGHT" and "```suggestion\n" in c["body"] for c in comments)
    assert any(c.get("start_line") for c in comments), "a multi-line stretch keeps its range"


def test_lines_outside_the_diff_and_new_files_go_to_a_patch_that_applies(repo):
    path, base, head = repo
    lines = git(path, "show", f"{head}:greet.py").splitlines(keepends=True)
    lines[0] = "line 1, far from the pull request's hunks\n"
    change, result = claude_changes(
        path,
        head,
        {
            "greet.py": "".join(lines),
            "docs/NEW.md": "# new\n",
            "other.py": None,
        },
    )
    assert result.suggestions == []
    assert sorted(result.patch_paths) == ["docs/NEW.md", "greet.py", "other.py"]
    patch = git(path, "format-patch", "-1", "--stdout", change, "--", *result.patch_paths)
    git(path, "checkout", "-q", "--detach", head)
    git(path, "am", "-q", input=patch)
    assert (path / "docs" / "NEW.md").read_text() == "# new\n" and not (path / "other.py").exists()
    assert git(path, "diff", change, "HEAD") == ""


def test_a_fence_outlasts_backticks_in_the_text():
    assert fence("a ``` b\n", "suggestion").startswith("````suggestion\n")
    assert fence("x").endswith("\n```") and fence("x").startswith("```\n")


def test_a_long_patch_is_cut_with_a_note():
    patch = "x" * (MAX_PATCH + 10)
    quoted = quoted_patch(patch)
    assert "does not apply" in quoted and len(quoted) < MAX_PATCH + 1000
    assert "does not apply" not in quoted_patch("small\n")
