"""The person's checkout, as `claudecluster run` reads it: only read, never written.

Their own git and config run here (it is their repository), with no optional locks, so that not
even `git status` refreshes their index, and with none of our secrets in the environment.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jobs.common.redact import redactor
from jobs.common.settings import SECRET_OWNERS
from jobs.session.commits import slug

LOCAL_PREFIX = "claude/local-"


class BadCheckout(ValueError):
    """Not a checkout a session can start from; the message says why."""


@dataclass(frozen=True)
class Checkout:
    """The person's checkout as the run found it; only read."""

    top: Path
    head: str  # the commit the session works on
    branch: str  # the current branch, "" when HEAD is detached
    uncommitted: list[str]  # `git status --porcelain` lines, left out of the session
    co_author: str  # "Name <email>" from the checkout's git identity, "" when it has none

    @property
    def where(self) -> str:
        at = f"branch {self.branch}" if self.branch else "a detached HEAD"
        return f"{at}, commit {self.head[:12]}"


def _read_git(top: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_OWNERS}
    return subprocess.run(
        ["git", "-C", str(top), *args],
        capture_output=True,
        text=True,
        env={**env, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
        timeout=120,
    )


def inspect_checkout(path: Path) -> Checkout:
    if not path.is_dir():
        raise BadCheckout(f"{path} is not a directory")
    found = _read_git(path, "rev-parse", "--show-toplevel")
    if found.returncode != 0:
        said = (found.stderr.strip().splitlines() or ["no work tree"])[0]
        raise BadCheckout(f"{path} is not a git repository ({redactor(said)})")
    top = Path(found.stdout.strip())
    head = _read_git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        raise BadCheckout(
            f"the repository at {top} has no commits yet: commit something for Claude to start from"
        )
    branch = _read_git(top, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.strip()
    status = _read_git(top, "status", "--porcelain", "--untracked-files=normal").stdout
    name = _read_git(top, "config", "user.name").stdout.strip()
    email = _read_git(top, "config", "user.email").stdout.strip()
    return Checkout(
        top,
        head.stdout.strip(),
        branch,
        [line for line in status.splitlines() if line.strip()],
        f"{name} <{email}>" if name and email else "",
    )


def wanted_branch(top: Path, named: str | None, instruction: str) -> str:
    """The branch the person named, or `claude/local-<slug>`; checked to be a valid name."""
    wanted = named or f"{LOCAL_PREFIX}{slug(instruction)}"
    checked = _read_git(top, "check-ref-format", "--branch", wanted)
    if checked.returncode != 0 or checked.stdout.strip() != wanted:
        raise BadCheckout(f"{wanted!r} is not a valid branch name")
    return wanted
