"""The session workspace against the GitHub stand-in's real git smart-HTTP."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from jobs.sandbox.workspace import GitError, Workspace
from tests.standins.github import GitHubStandIn

REPO = "octo-org/tools"
INSTALLATION = 77


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, "octo-org")
        gh.add_repo(REPO, INSTALLATION, files={"README.md": "# tools\n", "src/app.py": "x = 1\n"})
        yield gh


@pytest.fixture
def token(github):
    return github.mint_token(INSTALLATION, ["tools"], {"contents": "write"})


@pytest.fixture
def workspace(github, token, tmp_path):
    ws = Workspace.clone(tmp_path, f"{github.url}/{REPO}.git", "main", token)
    yield ws
    ws.remove()


def files_under(root: Path):
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                yield path


def test_clone_leaves_the_token_nowhere_on_disk(workspace, token):
    assert (workspace.tree / "README.md").read_text() == "# tools\n"
    assert not (workspace.tree / ".git").exists(), "the sandbox must get no git state"
    for path in files_under(workspace.root):
        assert token.encode() not in path.read_bytes(), path
    config = (workspace.gitdir / "config").read_text()
    assert "x-access-token" not in config and "@" not in config.split("url = ")[1].split()[0]


def test_tree_belongs_to_the_sandbox_user(workspace):
    if os.geteuid() != 0:
        pytest.fail("this test must run as root, as CI does")
    assert os.stat(workspace.tree / "src" / "app.py").st_uid == 1000
    assert os.stat(workspace.gitdir).st_uid == 0


def test_commit_and_push_a_new_branch(github, workspace):
    (workspace.tree / "NEW.md").write_text("new\n")
    (workspace.tree / "README.md").unlink()
    change = workspace.commit("Add NEW.md\n\nbody\n", "bot[bot]", "1+bot[bot]@users.noreply.test")
    assert sorted(change.files) == ["A\tNEW.md", "D\tREADME.md"]
    workspace.push("claude/issue-1-new")
    assert github.read_file(REPO, "claude/issue-1-new", "NEW.md") == "new\n"
    assert github.branches(REPO)["claude/issue-1-new"] == change.sha
    assert "bot[bot] <1+bot[bot]@users.noreply.test>" in github.git(
        REPO, "log", "-1", "--format=%an <%ae>", "claude/issue-1-new"
    )


def test_nothing_changed_is_no_commit(workspace):
    assert workspace.commit("nothing", "bot", "bot@example.test") is None


def test_free_branch_skips_names_already_taken(github, token, tmp_path):
    ws = Workspace.clone(tmp_path, f"{github.url}/{REPO}.git", "main", token)
    (ws.tree / "a.txt").write_text("a")
    ws.commit("a", "bot", "bot@example.test")
    name = ws.free_branch("claude/issue-9-taken")
    ws.push(name)
    assert ws.free_branch("claude/issue-9-taken") == "claude/issue-9-taken-2"
    ws.remove()
    assert not ws.root.exists()


def test_push_never_forces_over_a_moved_branch(github, token, tmp_path):
    first = Workspace.clone(tmp_path / "1", f"{github.url}/{REPO}.git", "main", token)
    second = Workspace.clone(tmp_path / "2", f"{github.url}/{REPO}.git", "main", token)
    for ws, text in ((first, "one"), (second, "two")):
        (ws.tree / "race.txt").write_text(text)
        ws.commit(text, "bot", "bot@example.test")
    first.push("claude/issue-10-race")
    with pytest.raises(GitError) as failure:
        second.push("claude/issue-10-race")
    assert token not in str(failure.value)
    assert github.read_file(REPO, "claude/issue-10-race", "race.txt") == "one"
    assert not [p for p in github.pushes if p.forced]


def test_planted_git_state_in_the_tree_is_neither_run_nor_followed(workspace, tmp_path):
    # The agent owns the tree: it may plant a repository with hooks, an fsmonitor and a filter,
    # or a gitfile pointing outside the tree. None of it may run or be read by the worker.
    canary = tmp_path / "canary"
    evil = f"#!/bin/sh\ntouch {canary}\n"
    planted = workspace.tree / ".git"
    (planted / "hooks").mkdir(parents=True)
    for hook in ("pre-commit", "post-commit", "pre-push", "reference-transaction"):
        (planted / "hooks" / hook).write_text(evil)
        (planted / "hooks" / hook).chmod(0o755)
    (planted / "config").write_text(
        f"[core]\n\tfsmonitor = touch {canary}\n\thooksPath = hooks\n"
        f"\tsshCommand = touch {canary}\n"
        f'[remote "origin"]\n\turl = ssh://git@localhost/x.git\n'
        f'[filter "x"]\n\tclean = touch {canary}\n\tsmudge = touch {canary}\n'
    )
    (workspace.tree / ".gitattributes").write_text("* filter=x\n")
    outside = tmp_path / "outside-repo"
    subprocess.run(["git", "init", "-q", str(outside)], check=True)
    (workspace.tree / "sub").mkdir()
    (workspace.tree / "sub" / ".git").write_text(f"gitdir: {outside}/.git\n")
    (workspace.tree / "leak").symlink_to("/etc/passwd")
    (workspace.tree / "changed.txt").write_text("x\n")

    change = workspace.commit("agent work", "bot", "bot@example.test")
    workspace.push("claude/issue-11-hostile")

    assert not canary.exists(), "a hook, fsmonitor or filter planted by the agent ran"
    assert not planted.exists() and not (workspace.tree / "sub" / ".git").exists()
    names = {line.split("\t")[1] for line in change.files}
    assert names == {".gitattributes", "changed.txt", "leak"}
    # The symlink is committed as a link, never as the content of the file it points to.
    mode = workspace._git("ls-tree", "HEAD", "leak").stdout.split()[0]
    assert mode == "120000"
    assert stat.S_ISDIR(os.stat(workspace.gitdir).st_mode)


def test_control_files_are_written_beside_the_tree_and_never_through_a_link(workspace, tmp_path):
    target = tmp_path / "host-file"
    written = workspace.write_control("review/pull-request.diff", "the diff\n")
    assert written.parent.parent == workspace.control and workspace.tree not in written.parents
    assert written.read_text() == "the diff\n" and oct(written.stat().st_mode & 0o777) == "0o644"
    # A link where a control file goes (the sandbox cannot write there; a bug might) is an
    # error, and what it points at stays untouched.
    (workspace.control / "prompt.md").symlink_to(target)
    with pytest.raises(OSError):
        workspace.write_control("prompt.md", "x")
    assert not target.exists()
